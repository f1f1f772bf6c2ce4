"""A config for a search space of your own: search, controller, child training and data; no space.

  from nas_jax.configs import custom
  cfg = custom.get_config()          # custom.get_config("quick"): a tiny run
  result = experiment.run_search(cfg, "/tmp/nas_mine", space=MySpace())

The ``search_space`` section is empty (``name=""``): the space is the object given to
``run_search``, and it is what the config is checked against. Without one (e.g. ``--config custom``
on the command line) the search stops with a one-line ConfigError.

The rest is the digits main job's (``cnn_digits``) minus its CNN section: scikit-learn's 8x8
digits (no download), each child trained 4 epochs (batch 64, reward from the last 2), controller
Adam 0.01 with baseline decay 0.8, 16 controller steps x 8 children. Runtime and result depend on
the space (none measured for this config); ``:quick`` (2 steps x 2 children, 1 epoch on 256
images) is a tiny run for tests.
"""

from nas_jax.config import USER_SPACE, default_config


def get_config(arg: str | None = None):
  c = default_config(USER_SPACE)
  c.data.name = "digits"
  c.child.epochs = 4
  c.child.reward_last_epochs = 2
  c.child.batch_size = 64
  c.child.fast_compile = True
  c.controller.learning_rate = 0.01
  c.controller.baseline_decay = 0.8
  c.search.num_steps = 16
  c.search.children_per_step = 8
  if arg == "quick":
    c.child.epochs = 1
    c.child.reward_last_epochs = 1
    c.data.max_train = 256
    c.search.num_steps = 2
    c.search.children_per_step = 2
  elif arg:
    raise ValueError(f"custom config: unknown argument {arg!r}; use ':quick' or nothing")
  return c
