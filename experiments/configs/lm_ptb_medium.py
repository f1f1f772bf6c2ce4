"""Zaremba et al. (2014) *medium* PTB language model: 2x650 LSTM, dropout 0.5, 39 epochs.

The config lives in ``nas_jax/configs/lm_ptb_medium.py``, so that notebooks and installed
copies load it too (``from nas_jax.configs import lm_ptb_medium``); ``--config`` names this file.
"""

from nas_jax.configs.lm_ptb_medium import get_config  # noqa: F401  (ml_collections calls get_config)
