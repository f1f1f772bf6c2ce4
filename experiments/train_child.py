"""``nas-jax train-child`` in a clone: the entry point is :mod:`nas_jax.cli.train_child` (``--help``: its
flags)."""

from nas_jax.cli import train_child

if __name__ == "__main__":
  train_child.run()
