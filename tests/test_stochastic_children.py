"""Children whose modules draw random numbers in training (dropout): every stream they ask for."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nas_jax import experiment
from nas_jax.spaces import base
from nas_jax.training import child, data

from test_search import fake_config, read_rows
from toy_space import ACTIVATIONS, MLPArch


class DropoutMLP(nn.Module):
  arch: MLPArch
  rate: float
  num_classes: int
  rng_collections = ("noise",)   # draws from a stream of its own besides dropout's

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = x.reshape(x.shape[0], -1)
    if train:   # input noise from the "noise" stream
      h = h + 0.01 * jax.random.normal(self.make_rng("noise"), h.shape)
    for width, act in zip(self.arch.widths, self.arch.activations):
      h = ACTIVATIONS[act](nn.Dense(width)(h))
      h = nn.Dropout(self.rate, deterministic=not train)(h)
    return nn.Dense(self.num_classes)(h)


@dataclasses.dataclass(frozen=True)
class DropoutMLPSpace(base.SearchSpace):
  """The README's MLP space plus one decision: the dropout rate after every hidden layer."""
  widths: tuple[int, ...] = (16, 32)
  rates: tuple[float, ...] = (0.0, 0.5)
  name: str = "dropout_mlp"

  @property
  def decisions(self):
    return (base.Decision("width", len(self.widths)), base.Decision("dropout", len(self.rates)))

  def num_layers(self, num_sampled):
    return 2

  def plan(self, num_layers):
    return tuple(base.choice(0) for _ in range(num_layers)) + (base.choice(1),)

  def decode(self, plan, tokens_T):
    v = base.split_tokens(plan, tokens_T)
    return (MLPArch(tuple(self.widths[i] for i in v[:-1]), ("relu",) * (len(v) - 1)),
            self.rates[v[-1]])

  def build(self, arch, num_classes):
    mlp, rate = arch
    return DropoutMLP(mlp, rate, num_classes)


def test_a_search_over_dropout_rates_trains_every_child(tmp_path):
  cfg = fake_config(steps=3)
  cfg.child.epochs = 3
  dataset = data.load_dataset("digits", max_train=256, seed=0)
  experiment.run_search(cfg, str(tmp_path), space=DropoutMLPSpace(), dataset=dataset,
                        progress=False)
  rows = read_rows(tmp_path)
  assert len(rows) == 12 and not [r["error"] for r in rows if r["failed"]]
  assert {r["tokens"][-1] for r in rows} == {0, 1}   # both rates were trained
  assert all(r["val_accuracy"] > 0.2 for r in rows)  # learnt, dropout or not (10 classes)


def test_the_streams_are_fresh_per_step_and_absent_in_evaluation():
  model = DropoutMLP(MLPArch((8,), ("relu",)), 0.5, 3)
  streams = child.rng_streams(model, jax.random.key(0))
  assert set(streams) == {"dropout", "noise"}
  variables = model.init(jax.random.key(1), jnp.ones((2, 4)))
  x = jnp.ones((2, 4))
  a, b = (model.apply(variables, x, train=True, rngs=child.rng_streams(model, jax.random.key(k)))
          for k in (2, 3))
  assert not np.allclose(a, b)                     # another step's key, other masks
  np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))
