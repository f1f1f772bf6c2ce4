"""Final training of a CIFAR-10 search's best CNN, the paper's for an accelerator
(``experiments/train_child.py``).

The config lives in ``nas_jax/configs/cnn_cifar10_final.py``, so that notebooks and installed
copies load it too (``from nas_jax.configs import cnn_cifar10_final``); ``--config`` names this
file.
"""

from nas_jax.configs.cnn_cifar10_final import get_config  # noqa: F401  (ml_collections calls it)
