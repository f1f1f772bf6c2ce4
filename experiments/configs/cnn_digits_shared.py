"""Weight-sharing (ENAS-style) CNN search on digits.

The config lives in ``nas_jax/configs/cnn_digits_shared.py``; ``--config`` names this file.
"""

from nas_jax.configs.cnn_digits_shared import get_config  # noqa: F401  (ml_collections calls it)
