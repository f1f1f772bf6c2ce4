"""``nas-jax train-lm`` in a clone: the entry point is :mod:`nas_jax.cli.train_lm` (``--help``: its
flags)."""

from nas_jax.cli import train_lm

if __name__ == "__main__":
  train_lm.run()
