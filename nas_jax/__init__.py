"""nas_jax: Neural Architecture Search with Reinforcement Learning (Zoph & Le, ICLR 2017) in JAX."""

__version__ = "0.1.0"
__all__ = ["NASCell"]


def __getattr__(name):  # NASCell imported on first use: ``import nas_jax`` stays light
  if name == "NASCell":
    from nas_jax.spaces.nascell import NASCell  # pylint: disable=g-import-not-at-top
    return NASCell
  raise AttributeError(f"module 'nas_jax' has no attribute {name!r}")
