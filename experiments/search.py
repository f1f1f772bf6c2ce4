"""``nas-jax search`` in a clone: the entry point is :mod:`nas_jax.cli.search` (``--help``: its
flags)."""

from nas_jax.cli import search

if __name__ == "__main__":
  search.run()
