"""``python -m nas_jax COMMAND [flags]``: the ``nas-jax`` command (``nas_jax.cli``)."""

from nas_jax import cli

if __name__ == "__main__":
  cli.main()
