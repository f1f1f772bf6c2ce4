"""``nas-jax report`` in a clone: the entry point is :mod:`nas_jax.cli.report` (``--help``: its
flags)."""

from nas_jax.cli import report

if __name__ == "__main__":
  report.run()
