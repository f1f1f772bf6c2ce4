"""The NASCell language model at the paper's size (Zoph & Le 2017): 2x740, tied, 24.9M parameters.

The config lives in ``nas_jax/configs/lm_ptb_nas.py``, so that notebooks and installed
copies load it too (``from nas_jax.configs import lm_ptb_nas``); ``--config`` names this file.
"""

from nas_jax.configs.lm_ptb_nas import get_config  # noqa: F401  (ml_collections calls get_config)
