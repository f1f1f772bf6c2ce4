"""nas_jax: Neural Architecture Search with Reinforcement Learning (Zoph & Le, ICLR 2017) in JAX."""

from nas_jax.spaces.nascell import NASCell

__version__ = "0.1.0"
__all__ = ["NASCell"]
