"""A tiny example search space: an MLP with 2 hidden layers (width and activation per layer).

It shows what a user writes to add a space: decisions, a plan, decode, build. Nothing else in
nas_jax changes.
"""

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from nas_jax.spaces import base

ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh}


class MLPArch(NamedTuple):
  widths: tuple[int, ...]
  activations: tuple[str, ...]


class MLP(nn.Module):
  arch: MLPArch
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    h = x.reshape(x.shape[0], -1)
    for width, act in zip(self.arch.widths, self.arch.activations):
      h = ACTIVATIONS[act](nn.Dense(width)(h))
    return nn.Dense(self.num_classes)(h)


@dataclasses.dataclass(frozen=True)
class MLPSpace(base.SearchSpace):
  widths: tuple[int, ...] = (4, 16, 64)
  activations: tuple[str, ...] = ("relu", "tanh")
  layers: int = 2
  name: str = "mlp"

  @property
  def decisions(self):
    return (base.Decision("width", len(self.widths)),
            base.Decision("activation", len(self.activations)))

  def num_layers(self, num_sampled):
    return self.layers

  def plan(self, num_layers):
    return tuple(base.choice(d) for _ in range(num_layers) for d in (0, 1))

  def decode(self, plan, tokens_T):
    v = base.split_tokens(plan, tokens_T)
    return MLPArch(tuple(self.widths[i] for i in v[0::2]),
                   tuple(self.activations[i] for i in v[1::2]))

  def build(self, arch, num_classes):
    return MLP(arch=arch, num_classes=num_classes)
