"""A config for a search space of your own (no space section): ``run_search(cfg, workdir,
space=MySpace())``.

The config lives in ``nas_jax/configs/custom.py``, so that notebooks and installed copies load it
too (``from nas_jax.configs import custom``); ``--config`` names this file, and a command-line run
stops with a one-line error (the command line cannot pass a space object).
"""

from nas_jax.configs.custom import get_config  # noqa: F401  (ml_collections calls get_config)
