"""The experiment configs, as a package (``experiments/configs/*.py`` re-export them).

>>> from nas_jax.configs import cnn_digits
>>> cfg = cnn_digits.get_config()          # the README's main job; get_config("quick") for tests

Each module's ``get_config(arg)`` returns a locked ``ml_collections.ConfigDict`` built on
``nas_jax.config.default_config``; change fields before ``nas_jax.experiment.run_search``.
``custom`` is the config of a space of your own: ``run_search(custom.get_config(), workdir,
space=MySpace())``.
"""

import importlib

NAMES = ("cnn_digits", "cnn_cifar10", "rnn_ptb", "rnn_ptb_cpu", "lm_ptb_small", "lm_ptb_medium",
         "lm_ptb_nas", "lm_ptb_cpu", "cnn_digits_final", "cnn_cifar10_final", "cnn_digits_shared",
         "cnn_cifar10_shared", "rnn_ptb_shared_cpu", "rnn_ptb_shared", "rnn_ptb_enas_cpu",
         "rnn_ptb_enas_shared_cpu", "custom")


def get_config(name: str, arg: str | None = None):
  """The config of experiment ``name`` (one of :data:`NAMES`) with its optional argument."""
  if name not in NAMES:
    raise ValueError(f"unknown experiment config {name!r}; one of {list(NAMES)}")
  return importlib.import_module(f"nas_jax.configs.{name}").get_config(arg)
