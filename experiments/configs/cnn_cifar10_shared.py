"""Weight-sharing (ENAS-style) CNN search on CIFAR-10: ENAS's macro schedule for one accelerator.

The config lives in ``nas_jax/configs/cnn_cifar10_shared.py``; ``--config`` names this file.
"""

from nas_jax.configs.cnn_cifar10_shared import get_config  # noqa: F401  (ml_collections calls it)
