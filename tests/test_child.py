"""Child training: real digits, the paper's reward, failures."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from nas_jax.training import child, data, optim, trainer
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
  supported = trainer._cpu_conv_options()  # pylint: disable=protected-access
  if "xla_cpu_experimental_ynn_fusion_type" in supported:
    assert "INDIVIDUAL_CONVOLUTION" not in opts["xla_cpu_experimental_ynn_fusion_type"]
  assert {k: opts[k] for k in supported} == supported  # every option the XLA accepts is asked for
  monkeypatch.setenv("NAS_JAX_YNN_CONVOLUTIONS", "1")
  assert trainer.conv_compiler_options(fast_compile=False) is None


def test_a_conv_option_the_installed_xla_lacks_is_left_out(monkeypatch):
  monkeypatch.setattr(trainer, "_CPU_CONV_OPTIONS", ({"xla_no_such_option_of_nas_jax": True},
                                                     {"xla_cpu_use_fusion_emitters": False}))
  trainer._cpu_conv_options.cache_clear()  # pylint: disable=protected-access
  try:
    assert trainer.conv_compiler_options(fast_compile=False) == {
        "xla_cpu_use_fusion_emitters": False}
  finally:
    trainer._cpu_conv_options.cache_clear()  # pylint: disable=protected-access


PAPER_ARCH = CNNArch((Layer(5, 3, 1, 1, 36, ()), Layer(3, 7, 1, 1, 24, (0,)),
                      Layer(1, 5, 1, 1, 64, (0, 1))))


def test_host_init_draws_the_variables_of_model_init_in_distribution():
  """CNNChild's variables drawn on the host: model.init's shapes, dtypes, constants and kernel
  distribution (LeCun normal: truncated at 2 std, std 1/sqrt(fan-in)); the same key the same."""
  model = CNNSpace().build(PAPER_ARCH, 10)
  x = np.zeros((1, 8, 8, 1), np.float32)
  ours = child.host_init(model, jax.random.key(1), x)
  ref = model.init(jax.random.key(1), x, train=False)
  flat, ref_flat = (dict(jax.tree_util.tree_leaves_with_path(v)) for v in (ours, ref))
  assert flat.keys() == ref_flat.keys()
  kernels = 0
  for path, a in flat.items():
    b = np.asarray(ref_flat[path])
    assert a.shape == b.shape and a.dtype == b.dtype, path
    if path[-1].key == "kernel":
      kernels += 1
      fan_in = np.prod(a.shape[:-1])
      assert np.std(a) * np.sqrt(fan_in) == pytest.approx(1.0, abs=0.05), path
      assert np.abs(a).max() * np.sqrt(fan_in) <= 2.0 / 0.8796 + 1e-5, path
      assert np.std(a) == pytest.approx(np.std(b), rel=0.1), path
    else:
      np.testing.assert_array_equal(a, b, err_msg=str(path))  # zeros and ones
  assert kernels == 3 * 1 + 1  # a conv per layer, the dense layer
  again = child.host_init(model, jax.random.key(1), x)
  other = child.host_init(model, jax.random.key(2), x)
  jax.tree.map(np.testing.assert_array_equal, ours, again)
  k = ("params", "Conv_0", "kernel")
  assert not np.array_equal(ours[k[0]][k[1]][k[2]], other[k[0]][k[1]][k[2]])


def test_exact_init_state_is_the_host_draw_and_zero_optimizer_state_of_every_schedule():
  """The exact executor's init is host_init (no program to compile) and the optimiser state it
  makes is tx.init's (all zeros) for each learning-rate schedule."""
  model = CNNSpace().build(PAPER_ARCH, 10)
  x = np.zeros((1, 8, 8, 1), np.float32)
  for schedule in ("constant", "step", "cosine"):
    cfg = child.TrainConfig(epochs=2, lr_schedule=schedule)
    progs = child._programs(model, cfg, False, 5)  # pylint: disable=protected-access
    params, stats, opt_state = progs.init(jax.random.key(4), x)
    variables = child.host_init(model, jax.random.key(4), x)
    jax.tree.map(np.testing.assert_array_equal, params, variables["params"])
    jax.tree.map(np.testing.assert_array_equal, stats, variables["batch_stats"])
    expected = optim.child_optimizer(cfg, 5).init(params)
    assert jax.tree.structure(opt_state) == jax.tree.structure(expected), schedule
    jax.tree.map(np.testing.assert_array_equal, opt_state, expected)
    assert all(isinstance(a, jax.Array) for a in jax.tree.leaves((params, stats, opt_state)))


class _CustomInit(nn.Module):
  default_initializers = True  # wrongly: its variable is not one of Flax's layers'

  @nn.compact
  def __call__(self, x, train=False):
    w = self.param("w", nn.initializers.normal(), (x.shape[-1], 10))
    return x.reshape(x.shape[0], -1)[:, :w.shape[0]] @ w


def test_host_init_names_a_variable_it_cannot_draw():
  with pytest.raises(ValueError, match=r"_CustomInit.default_initializers.*'w'.*model.init"):
    child.host_init(_CustomInit(), jax.random.key(0), np.zeros((1, 4, 4, 1), np.float32))


def test_train_step_compiles_once_per_child_on_data_placed_on_a_device(digits):
  """The host-drawn state is committed where the data is (the exact evaluator places it on a
  device), so the train step's first call and those after it share one program."""
  placed = digits._replace(**{f: jax.device_put(getattr(digits, f), jax.devices()[0])
                              for f in ("train_images", "train_labels", "val_images",
                                        "val_labels")})
  cfg = child.TrainConfig(epochs=1, batch_size=64, reward_last_epochs=1)
  model = CNNSpace().build(CNNArch((Layer(3, 3, 1, 1, 8, ()),)), 10)
  res = child.evaluate(model, placed, cfg, jax.random.key(0))
  assert not res.failed, res.error
  progs = child._programs(model, cfg, False, trainer.steps_per_epoch(placed, cfg))  # pylint: disable=protected-access
  assert progs.train_step._cache_size() == 1  # pylint: disable=protected-access
