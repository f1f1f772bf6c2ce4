"""``nas-jax seeds`` in a clone: the entry point is :mod:`nas_jax.cli.seeds` (``--help``: its
flags)."""

from nas_jax.cli import seeds

if __name__ == "__main__":
  seeds.run()
