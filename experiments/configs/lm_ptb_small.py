"""Zaremba et al. (2014) *small* PTB language model: 2x200 LSTM, 13 epochs, no dropout.

The config lives in the package (``nas_jax/configs/lm_ptb_small.py``, so that notebooks and installed
copies can load it: ``from nas_jax.configs import lm_ptb_small``); this file is what ``--config`` names.
"""

from nas_jax.configs.lm_ptb_small import get_config  # noqa: F401  (ml_collections calls get_config)
