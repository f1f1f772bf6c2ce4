"""The CPU cell search's child (rnn_ptb_cpu.py) as a language model: a found cell's retrain.

The config lives in ``nas_jax/configs/lm_ptb_cpu.py``; ``--config`` names this file.
"""

from nas_jax.configs.lm_ptb_cpu import get_config  # noqa: F401  (ml_collections calls get_config)
