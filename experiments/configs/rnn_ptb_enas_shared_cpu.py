"""ENAS's recurrent-cell space on character-level PTB (see nas_jax/configs/rnn_ptb_enas_shared_cpu.py).

The config lives in ``nas_jax/configs/rnn_ptb_enas_shared_cpu.py``; ``--config`` names this file.
"""

from nas_jax.configs.rnn_ptb_enas_shared_cpu import get_config  # noqa: F401  (ml_collections calls it)
