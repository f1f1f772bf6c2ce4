"""A real recurrent-cell search on character-level Penn Treebank that a 2-core CPU can run.

The config lives in ``nas_jax/configs/rnn_ptb_cpu.py``, so that notebooks and installed
copies load it too (``from nas_jax.configs import rnn_ptb_cpu``); ``--config`` names this file.
"""

from nas_jax.configs.rnn_ptb_cpu import get_config  # noqa: F401  (ml_collections calls get_config)
