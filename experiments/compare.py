"""``nas-jax compare`` in a clone: the entry point is :mod:`nas_jax.cli.compare` (``--help``: its
flags)."""

from nas_jax.cli import compare

if __name__ == "__main__":
  compare.run()
