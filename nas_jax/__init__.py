"""nas_jax: Neural Architecture Search with Reinforcement Learning (Zoph & Le, ICLR 2017) in JAX."""

__version__ = "0.1.0"
