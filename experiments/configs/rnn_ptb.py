"""Recurrent-cell search on Penn Treebank with the paper's settings (Zoph & Le 2017, Section 4.2).

The config lives in ``nas_jax/configs/rnn_ptb.py``, so that notebooks and installed
copies load it too (``from nas_jax.configs import rnn_ptb``); ``--config`` names this file.
"""

from nas_jax.configs.rnn_ptb import get_config  # noqa: F401  (ml_collections calls get_config)
