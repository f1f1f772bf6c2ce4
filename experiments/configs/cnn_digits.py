"""CNN search on scikit-learn's 8x8 digits: the main job, real data, no download.

The config lives in ``nas_jax/configs/cnn_digits.py``, so that notebooks and installed
copies load it too (``from nas_jax.configs import cnn_digits``); ``--config`` names this file.
"""

from nas_jax.configs.cnn_digits import get_config  # noqa: F401  (ml_collections calls get_config)
