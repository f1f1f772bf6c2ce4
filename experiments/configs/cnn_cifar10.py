"""CNN search on CIFAR-10 with the paper's settings (Zoph & Le 2017, Section 4.1).

The config lives in ``nas_jax/configs/cnn_cifar10.py``, so that notebooks and installed
copies load it too (``from nas_jax.configs import cnn_cifar10``); ``--config`` names this file.
"""

from nas_jax.configs.cnn_cifar10 import get_config  # noqa: F401  (ml_collections calls get_config)
