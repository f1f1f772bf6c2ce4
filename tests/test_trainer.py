"""The shared child-training loop: divergence check, children axis, results."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax.training import child, data, optim, trainer

CFG = child.TrainConfig(epochs=3, batch_size=16, reward_last_epochs=2, eval_batch_size=32,
                        fast_compile=True)


def test_a_non_finite_loss_raises_one_message():
  with pytest.raises(FloatingPointError, match=r"^training loss became nan in epoch 3$"):
    trainer.check_finite(float("nan"), 3)
  trainer.check_finite(2.5, 1)
  ok, bad = trainer.diverged(np.array([1.0, np.inf], np.float32), 2)
  assert ok is None and str(bad) == "training loss became inf in epoch 2"
  res = trainer.failed_result(bad, {"val_ppl": None}, 7, 1.5)
  assert res == trainer.ChildResult(0.0, {"val_ppl": None}, 7, True,
                                    "FloatingPointError: training loss became inf in epoch 2", 1.5)


def _init(key, mask_D):
  """A linear classifier whose input features are masked by its 'architecture'."""
  return {"w": 0.1 * jax.random.normal(key, (mask_D.shape[0], 2)) * mask_D[:, None],
          "b": jnp.zeros((2,))}, {}


def _apply(params, batch_stats, mask_D, x, train, rng):
  del train, rng
  return (x.reshape(x.shape[0], -1) * mask_D) @ params["w"] + params["b"], batch_stats


@pytest.fixture(scope="module")
def halves():
  """4x4 images, class 1 when the top half is brighter than the bottom half."""
  rng = np.random.default_rng(0)

  def split(n):
    y = rng.integers(0, 2, n).astype(np.int32)
    x = 0.5 * rng.standard_normal((n, 4, 4, 1)).astype(np.float32)
    x[:, :2] += np.where(y, 1.0, -1.0)[:, None, None, None]
    return x, y
  (tx, ty), (vx, vy) = split(64), split(40)
  return data.Dataset("halves", tx, ty, vx, vy, vx, vy, 2, False)


def test_children_trained_together_equal_each_trained_alone(halves):
  masks = np.ones((3, 16), np.float32)
  masks[0, 8:] = 0.0        # sees the top half only
  masks[1, 0] = np.nan      # diverges in epoch 1
  keys = [jax.random.key(i) for i in range(3)]
  together = trainer.fit_classifiers(
      lambda: trainer.classifier_programs(_init, _apply, CFG, False, children=True), halves,
      CFG, keys, arch=masks, init_input=masks, children=True)
  alone_progs = trainer.classifier_programs(_init, _apply, CFG, False)
  alone = [trainer.fit_classifiers(lambda: alone_progs, halves, CFG, [k], arch=mk, init_input=mk)
           for mk, k in zip(masks, keys)]
  assert together.param_count == alone[0].param_count == 16 * 2 + 2
  for k, a in enumerate(alone):
    assert together.val_accuracies[k] == a.val_accuracies[0]
    assert str(together.errors[k]) == str(a.errors[0])
  assert together.errors[1] is not None and together.val_accuracies[1] == []
  assert len(together.val_accuracies[0]) == 3 and min(together.val_accuracies[2]) > 0.8
  # One reward per child from the last 2 epochs; the diverged child fails with reward 0.
  results = trainer.classifier_results(together, CFG, 0.5)
  for r, accs in zip(results, together.val_accuracies):
    assert r.metrics["val_accuracies"] == accs
  assert results[0].reward == max(together.val_accuracies[0][-2:]) ** 3
  assert results[1].failed and results[1].reward == 0.0
  assert results[1].metrics == {"val_accuracy": 0.0, "val_accuracies": []}
  assert results[1].error == "FloatingPointError: training loss became nan in epoch 1"


def test_an_exception_fails_every_child_with_its_traceback(halves):
  fit = trainer.fit_classifiers(lambda: 1 / 0, halves, CFG, [jax.random.key(0)] * 2,
                                children=True)
  results = trainer.classifier_results(fit, CFG, 0.0, param_counts=[5, 6])
  assert [r.param_count for r in results] == [5, 6]
  for r in results:
    assert r.failed and r.reward == 0.0 and r.error.startswith("ZeroDivisionError: division by")
    assert "Traceback" in r.error


def test_lm_loops_visit_every_segment_once():
  stream = np.arange(2 * 23).reshape(2, 23)
  seen = []

  def train_step(params, ops, carry, x, y, lr, key):
    assert key is None     # no dropout in this config
    seen.append(x[0, 0])
    return params + lr, carry, jnp.float32(x.size)

  cfg = type("Cfg", (), {"bptt": 5, "dropout": 0.0, "embed_dropout": 0.0})
  params, nlls, step = trainer.lm_epoch(train_step, 0.0, None, (), stream, cfg, 0.5, None, 3)
  assert seen == [0, 5, 10, 15] and step == 7 and params == 2.0 and len(nlls) == 4
  nlls, count = trainer.lm_nll(lambda p, o, c, x, y: (c, jnp.float32(y.size)), None, None, (),
                               stream, 5)
  assert count == 2 * 22 and math.isclose(sum(float(n) for n in nlls), count)


@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_a_learning_rate_schedule_sets_each_steps_rate(halves, schedule):
  """DenseNet's step decay (/10 at 50% and 75% of the epochs) or cosine decay, per SGD step."""
  cfg = child.TrainConfig(epochs=4, batch_size=16, learning_rate=0.1, momentum=0.0,
                          weight_decay=0.0, lr_schedule=schedule)
  steps = trainer.steps_per_epoch(halves, cfg)
  assert steps == 64 // 16
  lr = optim.child_learning_rate(cfg, steps)
  rates = [float(lr(s)) for s in range(4 * steps)]
  if schedule == "step":
    expected = [0.1] * (2 * steps) + [0.01] * steps + [0.001] * steps
  else:
    expected = [0.05 * (1 + math.cos(math.pi * s / (4 * steps))) for s in range(4 * steps)]
  np.testing.assert_allclose(rates, expected, rtol=1e-5)
  # Plain SGD: one step's update is minus the scheduled rate times the gradient.
  tx = optim.child_optimizer(cfg, steps)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  for s in range(4 * steps):
    updates, state = tx.update({"w": jnp.ones(3)}, state, params)
    np.testing.assert_allclose(updates["w"], -expected[s], rtol=1e-5)


def test_a_schedule_needs_the_steps_per_epoch_and_a_known_name():
  with pytest.raises(ValueError, match="needs the number of steps per epoch"):
    optim.child_optimizer(child.TrainConfig(lr_schedule="step"))
  with pytest.raises(ValueError, match=r"lr_schedule='linear'"):
    optim.child_optimizer(child.TrainConfig(lr_schedule="linear"), 10)
  assert optim.child_learning_rate(child.TrainConfig(learning_rate=0.3), None) == 0.3
