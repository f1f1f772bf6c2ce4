"""``nas-jax shared-seeds`` in a clone: the entry point is :mod:`nas_jax.cli.shared_seeds`
(``--help``: its flags)."""

from nas_jax.cli import shared_seeds

if __name__ == "__main__":
  shared_seeds.run()
