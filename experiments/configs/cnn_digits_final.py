"""Final training of the digits search's best CNN (``experiments/train_child.py``).

The config lives in ``nas_jax/configs/cnn_digits_final.py``, so that notebooks and installed
copies load it too (``from nas_jax.configs import cnn_digits_final``); ``--config`` names this file.
"""

from nas_jax.configs.cnn_digits_final import get_config  # noqa: F401  (ml_collections calls it)
