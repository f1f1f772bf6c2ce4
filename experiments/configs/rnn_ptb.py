"""Recurrent-cell search on Penn Treebank with the paper's settings (Zoph & Le 2017, Section 4.2).

The config lives in the package (``nas_jax/configs/rnn_ptb.py``, so that notebooks and installed
copies can load it: ``from nas_jax.configs import rnn_ptb``); this file is what ``--config`` names.
"""

from nas_jax.configs.rnn_ptb import get_config  # noqa: F401  (ml_collections calls get_config)
