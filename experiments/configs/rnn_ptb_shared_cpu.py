"""Weight-sharing (ENAS-style) recurrent-cell search on character-level PTB, on a CPU.

The config lives in ``nas_jax/configs/rnn_ptb_shared_cpu.py``; ``--config`` names this file.
"""

from nas_jax.configs.rnn_ptb_shared_cpu import get_config  # noqa: F401  (ml_collections calls it)
