"""Zaremba et al. (2014) *small* PTB language model: 2x200 LSTM, 13 epochs, no dropout.

The config lives in ``nas_jax/configs/lm_ptb_small.py``, so that notebooks and installed
copies load it too (``from nas_jax.configs import lm_ptb_small``); ``--config`` names this file.
"""

from nas_jax.configs.lm_ptb_small import get_config  # noqa: F401  (ml_collections calls get_config)
