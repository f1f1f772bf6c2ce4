"""Child training: real digits, the paper's reward, failures."""

import flax.linen as nn
import jax
import pytest

from nas_jax.training import child, data, trainer
from nas_jax.spaces import CNNArch, CNNSpace, Layer

from toy_space import MLPArch, MLPSpace


@pytest.fixture(scope="module")
def digits():
  return data.load_dataset("digits")


def test_reward_is_cube_of_max_of_last_k_epochs():
  cfg = child.TrainConfig(epochs=6, reward_last_epochs=5, reward_power=3.0)
  reward, acc = trainer.reward_from_accuracies([0.99, 0.5, 0.6, 0.8, 0.7, 0.75], cfg)
  assert acc == 0.8  # the 0.99 of epoch 1 is outside the last 5 epochs
  assert reward == pytest.approx(0.8 ** 3)


def test_digits_cnn_child_trains_above_chance(digits):
  arch = CNNArch((Layer(3, 3, 1, 1, 16, ()), Layer(3, 3, 1, 1, 16, (0,))))
  cfg = child.TrainConfig(epochs=3, batch_size=64, reward_last_epochs=2)
  res = child.evaluate(CNNSpace().build(arch, 10), digits, cfg, jax.random.key(0))
  assert not res.failed, res.error
  assert len(res.metrics["val_accuracies"]) == 3
  assert res.metrics["val_accuracy"] > 0.6  # chance is 0.1
  assert res.reward == pytest.approx(max(res.metrics["val_accuracies"][-2:]) ** 3)
  # conv 3x3x1x16 + 3x3x16x16 (no bias) + 2 BN scale/bias + dense 16x10+10
  assert res.param_count == 9 * 16 + 9 * 16 * 16 + 2 * 2 * 16 + 16 * 10 + 10


def test_same_key_same_result_and_user_space_trains(digits):
  space = MLPSpace()
  model = space.build(MLPArch((64, 16), ("relu", "tanh")), 10)
  cfg = child.TrainConfig(epochs=2, batch_size=64, reward_last_epochs=1)
  a = child.evaluate(model, digits, cfg, jax.random.key(3))
  b = child.evaluate(model, digits, cfg, jax.random.key(3))
  assert not a.failed and a.metrics["val_accuracy"] > 0.5
  assert a.metrics["val_accuracies"] == b.metrics["val_accuracies"]


def test_diverging_child_fails_with_reward_zero(digits):
  arch = CNNArch((Layer(3, 3, 1, 1, 8, ()),))
  cfg = child.TrainConfig(epochs=2, batch_size=64, learning_rate=1e30, reward_last_epochs=1)
  res = child.evaluate(CNNSpace().build(arch, 10), digits, cfg, jax.random.key(0))
  assert res.failed and res.reward == 0.0
  assert "loss became" in res.error


class _ShapeBug(nn.Module):
  """A user's module with a shape error, as a buggy search space would build."""

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(10)(x.reshape(x.shape[0], 7, -1, 5))


def test_child_that_raises_is_recorded_as_failed(digits):
  res = child.evaluate(_ShapeBug(), digits, child.TrainConfig(epochs=1, reward_last_epochs=1),
                       jax.random.key(0))
  assert res.failed and res.reward == 0.0
  assert "reshape" in res.error.lower() or "TypeError" in res.error, res.error


def test_children_side_by_side_give_the_results_of_one_after_another_in_order(digits):
  space = CNNSpace()
  archs = [CNNArch((Layer(3, 3, 1, 1, 8, ()), Layer(5, 3, 1, 1, 8, (0,)))),
           CNNArch((Layer(1, 3, 1, 1, 4, ()),)),
           CNNArch((Layer(3, 5, 1, 1, 8, ()), Layer(3, 3, 1, 1, 4, ()))),
           CNNArch((Layer(3, 3, 1, 1, 4, ()),))]
  models = [space.build(a, 10) for a in archs]
  models[2] = _ShapeBug()  # a failing child does not stop the ones after it
  cfg = child.TrainConfig(epochs=2, batch_size=64, reward_last_epochs=1)
  keys = [jax.random.key(k) for k in range(4)]
  alone = list(child.evaluate_many(models, digits, cfg, keys, workers=1))
  side_by_side = list(child.evaluate_many(models, digits, cfg, keys, workers=3))
  assert [r.failed for r in side_by_side] == [False, False, True, False]
  # the same numbers, bit for bit, in the order of the models
  assert [r.metrics for r in side_by_side] == [r.metrics for r in alone]
  assert [r.reward for r in side_by_side] == [r.reward for r in alone]
  assert len({r.metrics["val_accuracy"] for r in alone}) > 1  # distinct children, not one repeated


def test_parallel_children_auto_is_the_cpu_cores():
  import os  # pylint: disable=import-outside-toplevel
  assert child.parallel_children(3) == 3
  assert child.parallel_children(0) == len(os.sched_getaffinity(0))  # the tests run on a CPU


def test_cpu_conv_programs_use_xla_convolutions_unless_asked(monkeypatch):
  opts = trainer.conv_compiler_options(fast_compile=True)
  assert opts["xla_backend_optimization_level"] == 0
  if trainer._cpu_conv_options_supported():  # pylint: disable=protected-access
    assert "INDIVIDUAL_CONVOLUTION" not in opts["xla_cpu_experimental_ynn_fusion_type"]
  monkeypatch.setenv("NAS_JAX_YNN_CONVOLUTIONS", "1")
  assert trainer.conv_compiler_options(fast_compile=False) is None
