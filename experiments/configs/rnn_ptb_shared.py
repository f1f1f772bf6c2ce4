"""Weight-sharing (ENAS-style) recurrent-cell search on word-level PTB for one accelerator.

The config lives in ``nas_jax/configs/rnn_ptb_shared.py``; ``--config`` names this file.
"""

from nas_jax.configs.rnn_ptb_shared import get_config  # noqa: F401  (ml_collections calls it)
