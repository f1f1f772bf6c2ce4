"""``nas-jax ranking`` in a clone: the entry point is :mod:`nas_jax.cli.ranking` (``--help``: its
flags)."""

from nas_jax.cli import ranking

if __name__ == "__main__":
  ranking.run()
