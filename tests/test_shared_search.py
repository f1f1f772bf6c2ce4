"""The weight-sharing (ENAS-style) search: a shared-weights child is the masked and the exact child,
the controller learns a planted reward under shared weights, an interrupted search resumes to the
uninterrupted history, and the :quick configs run end to end.
"""

import glob
import json
import logging
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from nas_jax import config as config_lib
from nas_jax.configs import cnn_cifar10_shared, cnn_digits_shared
from nas_jax import experiment
from nas_jax.core import workdir as workdir_lib
from nas_jax.spaces import CNNArch, CNNSpace, Layer, masked_cnn
from nas_jax.spaces.cnn import CNNChild
from nas_jax.tools import analysis
from nas_jax.training import data, optim, shared_cnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 5


def _l(fh, fw, nf, inputs=()):
  return Layer(fh, fw, 1, 1, nf, tuple(inputs))


# Skip connections, a layer reading the image, inputs out of order; two convs per layer and a
# pool after layer 1 (children whose layers have different valid sizes on one canvas).
CASES = {
    "skips": (CNNSpace(filter_heights=(1, 3, 5), filter_widths=(1, 3), num_filters=(2, 4, 6)),
              [CNNArch((_l(3, 1, 4), _l(5, 3, 2, [0]), _l(1, 3, 6), _l(3, 3, 4, [0, 2]))),
               CNNArch((_l(5, 3, 6), _l(1, 1, 2, [0]), _l(3, 3, 4, [1, 0]), _l(5, 1, 2, [2, 1])))],
              (8, 8, 2)),
    "pool": (CNNSpace(filter_heights=(1, 3), filter_widths=(3, 5), num_filters=(3, 5),
                      convs_per_layer=2, pool_after_layers=(1,)),
             [CNNArch((_l(3, 3, 5), _l(1, 5, 3, [0]), _l(3, 3, 5, [1]), _l(1, 3, 3, [0])), 2,
                      (1,)),
              CNNArch((_l(1, 5, 3), _l(3, 3, 5, [0]), _l(3, 5, 3, [1]), _l(3, 3, 5, [0, 2])), 2,
                      (1,))],
             (7, 6, 1)),
}


def _jit(fn):
  return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0})


def _random_shared(net, seed):
  """Shared params with every entry random (BatchNorm too) and random running statistics."""
  rng = np.random.default_rng(seed)
  params = jax.tree_util.tree_map_with_path(
      lambda path, s: (rng.uniform(0.5, 1.5, s.shape) if path[-1].key == "scale" else
                       0.3 * rng.standard_normal(s.shape)).astype(np.float32),
      shared_cnn.init(net, jax.random.key(0)))
  stats = {k: {"mean": (0.3 * rng.standard_normal(v["mean"].shape)).astype(np.float32),
               "var": rng.uniform(0.5, 1.5, v["var"].shape).astype(np.float32)}
           for k, v in shared_cnn.batch_stats_placeholder(net).items()}
  return params, stats


@pytest.mark.parametrize("case", sorted(CASES))
def test_shared_child_is_the_masked_and_the_exact_child(case):
  space, archs, shape = CASES[case]
  net = masked_cnn.MaskedCNN(space, len(archs[0].layers), shape, NUM_CLASSES)
  params, stats = _random_shared(net, 1)
  x = jax.random.normal(jax.random.key(2), (4,) + shape)
  marcs = shared_cnn.encode(net, archs)
  both = lambda f: [f(False), f(True)]
  # The m children vmapped over their masks, the shared weights broadcast.
  shared = _jit(lambda p, s, m, x: both(lambda t: shared_cnn.apply_children(
      net, p, m, x, s, train=t)))(params, stats, marcs, x)
  exact_vars = [shared_cnn.exact_variables(net, a, params, stats) for a in archs]
  # The vmap executor's children: the exact children's weights embedded, one set per child.
  masked_p, masked_s = jax.tree.map(lambda *v: np.stack(v), *[
      net.embed_exact_variables(a, v) for a, v in zip(archs, exact_vars)])
  masked = _jit(jax.vmap(lambda p, s, m, x: both(lambda t: net.apply(p, s, m, x, train=t)[0]),
                         in_axes=(0, 0, 0, None)))(masked_p, masked_s, marcs, x)
  for k, (arch, variables) in enumerate(zip(archs, exact_vars)):
    model = CNNChild(arch, NUM_CLASSES)
    exact = _jit(lambda v, x: both(lambda t: model.apply(v, x, train=t, mutable=["batch_stats"])[0]))(
        variables, x)
    for mode in (0, 1):   # eval (running statistics), train (batch statistics)
      np.testing.assert_allclose(shared[mode][k], masked[mode][k], atol=1e-5, rtol=1e-5)
      np.testing.assert_allclose(shared[mode][k], exact[mode], atol=1e-4, rtol=1e-4)


def test_shared_training_step_touches_only_the_sampled_childs_weights():
  space, archs, shape = CASES["skips"]
  net = masked_cnn.MaskedCNN(space, 4, shape, NUM_CLASSES)
  cfg = config_lib.SharedConfig(enabled=True, lr_schedule="constant", weight_decay=0.0,
                                fast_compile=True)
  progs = shared_cnn.programs(net, cfg, False, 1, 1)
  params = shared_cnn.init(net, jax.random.key(0))
  before = jax.tree.map(np.array, params)
  images = np.random.default_rng(0).standard_normal((8,) + shape).astype(np.float32)
  labels = np.arange(8, dtype=np.int32) % NUM_CLASSES
  after, _, loss = progs.train_step(params, optim.shared_optimizer(cfg, 1, 1).init(params),
                                    shared_cnn.encode(net, archs[:1]), images, labels,
                                    np.arange(8), jax.random.key(1), 0)
  assert np.isfinite(loss)
  used = net.param_masks(net.encode(archs[0]))
  for b, a, u in zip(jax.tree.leaves(before), jax.tree.leaves(after), jax.tree.leaves(used)):
    u = np.broadcast_to(np.asarray(u) > 0, b.shape)
    np.testing.assert_array_equal(a[~u], b[~u])   # weights the child does not use: unchanged
    assert np.any(a[u] != b[u]) or not u.any()


def test_eval_batches_cover_every_example_once_with_full_batches():
  for n, bs in ((10, 4), (8, 4), (3, 8)):
    batches = shared_cnn.eval_batches(n, bs)
    assert all(len(idx) == min(bs, n) and len(set(idx)) == len(idx) for idx, _ in batches)
    counted = np.concatenate([idx[v] for idx, v in batches])
    assert sorted(counted.tolist()) == list(range(n))


def test_sgdr_restarts_after_t0_then_t0_times_mul_epochs():
  cfg = config_lib.SharedConfig(lr_schedule="sgdr", learning_rate=1.0, lr_min=0.0, lr_t0=2,
                                lr_t_mul=2)
  lr = optim.shared_learning_rate(cfg, steps_per_epoch=10, total_steps=10**6)
  assert float(lr(0)) == pytest.approx(1.0)
  assert float(lr(10)) == pytest.approx(0.5, abs=1e-6)     # half way through the first period
  assert float(lr(20)) == pytest.approx(1.0)               # restart after 2 epochs
  assert float(lr(40)) == pytest.approx(0.5, abs=1e-6)     # half way through the 4-epoch period
  assert float(lr(60)) == pytest.approx(1.0)               # restart after 2 + 4 epochs


@pytest.fixture(scope="module")
def digits():
  return data.load_dataset("digits", max_train=128)


def _quick(steps=2, searcher="reinforce"):
  cfg = cnn_digits_shared.get_config("quick")
  cfg.shared.controller_steps = steps
  cfg.search.searcher = searcher
  return cfg


def _rows(workdir):
  return [{k: v for k, v in r.items() if k != "seconds"}
          for r in analysis.read_history(os.path.join(workdir, "history.jsonl"))]


def _steps(workdir):
  return [{k: v for k, v in s.items() if not k.endswith("seconds") and k != "children"}
          for s in analysis.read_history(os.path.join(workdir, "steps.jsonl"))]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, digits):
  """(workdir, result) of the quick digits search, run once for the tests that read it."""
  workdir = tmp_path_factory.mktemp("quick")
  return workdir, experiment.run_search(_quick(), str(workdir), dataset=digits)


def test_quick_digits_search_writes_a_workdir_like_the_exact_search(quick_run):
  tmp_path, result = quick_run
  cfg = _quick()
  sh, m = cfg.shared, cfg.search.children_per_step
  rows = analysis.read_history(str(tmp_path / "history.jsonl"))
  per_phase = sh.controller_steps * m
  assert [(r["step"], r["index"]) for r in rows] == (
      [(p, i) for p in range(sh.epochs) for i in range(per_phase)] +
      [(sh.epochs, k) for k in range(sh.derive_samples)])
  assert [r["evaluation"] for r in rows] == (["shared"] * (sh.epochs * per_phase) +
                                             ["derive"] * sh.derive_samples)
  for r in rows:
    assert r["reward"] == pytest.approx(r["val_accuracy"] ** sh.reward_power)
    assert not r["failed"]
    assert r["param_count"] > 0 and len(r["arch"]["layers"]) == 2
  summary = json.loads((tmp_path / "summary.json").read_text())
  derived = [r for r in rows if r["evaluation"] == "derive"]
  assert summary["best"]["reward"] == max(r["reward"] for r in derived)
  assert summary["best"]["evaluation"] == "derive" == summary["evaluation"]
  assert summary["best"] == result.best and result.num_evaluated == len(rows)
  assert 1 <= len(summary["top_k"]) <= sh.derive_top_k
  assert len({tuple(r["tokens"]) for r in summary["top_k"]}) == len(summary["top_k"])
  assert summary["num_evaluated"] == len(rows) and summary["metric"] == "val_accuracy"
  assert sorted(os.listdir(tmp_path / "checkpoints")) == [str(s) for s in
                                                          range(1, sh.epochs + 2)]
  steps = analysis.read_history(str(tmp_path / "steps.jsonl"))
  assert [s["step"] for s in steps] == list(range(sh.epochs + 1))
  assert [s["evaluation"] for s in steps] == ["shared"] * sh.epochs + ["derive"]
  assert all(np.isfinite(s["train_loss"]) for s in steps[:-1])
  assert glob.glob(str(tmp_path / "tensorboard" / "events.*"))
  # The workdir's architecture reads back for a retrain (train_child.py --arch ...).
  best = CNNSpace(**{k: v for k, v in summary["search_space"].items()}).from_json(
      summary["best"]["arch"])
  assert len(best.layers) == 2


def test_interrupted_search_resumes_to_the_uninterrupted_history(tmp_path, digits, quick_run):
  cfg = _quick()
  whole, broken = str(quick_run[0]), str(tmp_path / "broken")
  calls = []

  def interrupt_after(n):
    def reward(arch, acc):
      if len(calls) >= n:
        raise KeyboardInterrupt("simulated kill")
      calls.append(1)
      return acc ** cfg.shared.reward_power
    return reward
  # Mid phase 0; mid phase 1 (after checkpoint 1); mid derive (after checkpoint 2).
  for n in (3, 4, 4):   # calls counted per run; a resumed run reuses the rows already written
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
      experiment.run_search(cfg, broken, dataset=digits, reward_fn=interrupt_after(n))
  experiment.run_search(cfg, broken, dataset=digits)
  assert _rows(broken) == _rows(whole) and len(_rows(whole)) == 11
  assert _steps(broken) == _steps(whole) and len(_steps(whole)) == 3


def test_the_derived_architecture_is_what_train_child_retrains_with_arch(quick_run):
  from nas_jax.configs import cnn_digits_final  # pylint: disable=import-outside-toplevel
  workdir = str(quick_run[0])
  best = json.loads(open(os.path.join(workdir, "summary.json")).read())["best"]
  plan = experiment.retrain_plan(cnn_digits_final.get_config("quick"), os.path.join(workdir, "retrain"),
                      search_workdir=workdir, arch=best["description"])
  assert [c.tokens for c in plan.children] == [best["tokens"]]
  # retrain reports the architecture's best reward over all its rows (a controller-step row too)
  assert plan.children[0].search_reward >= best["reward"] - 1e-9
  # Without --arch it retrains the derive stage's best, not a row scored on one minibatch.
  plan = experiment.retrain_plan(cnn_digits_final.get_config("quick"), os.path.join(workdir, "retrain"),
                      search_workdir=workdir)
  assert [c.tokens for c in plan.children] == [best["tokens"]]


def test_random_search_uses_the_same_shared_weights_and_derive(tmp_path, digits, capsys,
                                                               monkeypatch):
  monkeypatch.setattr(logging.getLogger("absl"), "level", logging.WARNING)  # as in a fresh process
  cfg = _quick(searcher="random")
  experiment.run_search(cfg, str(tmp_path), dataset=digits)
  steps = analysis.read_history(str(tmp_path / "steps.jsonl"))
  assert "loss" not in steps[0] and [s["evaluation"] for s in steps][-1] == "derive"
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["best"]["evaluation"] == "derive"
  # Progress on stderr for a Python caller, as run_search's exact search gives it: one line per
  # epoch, one for the derive phase; none with progress=False.
  err = capsys.readouterr().err.splitlines()
  epochs = cfg.shared.epochs
  assert [l.split(" | ")[0] for l in err if l.startswith("epoch ")] == [
      f"epoch {e + 1}/{epochs}" for e in range(epochs)]
  assert len([l for l in err if l.startswith("derive: ")]) == 1
  experiment.run_search(cfg, str(tmp_path / "off"), dataset=digits, progress=False)
  err = capsys.readouterr().err.splitlines()
  assert not [l for l in err if l.startswith(("epoch ", "derive: "))]


def test_controller_learns_a_planted_architecture_under_shared_weights(tmp_path, digits):
  cfg = _quick(steps=30)
  cfg.search.children_per_step = 8
  cfg.controller.tanh_constant = None   # 1.5 caps a 4-way choice's probability at 0.87
  cfg.controller.entropy_weight = 0.0
  cfg.shared.epochs = 1
  cfg.shared.train_steps = 1
  cfg.shared.derive_samples = 16
  cfg.controller.learning_rate = 0.05
  planted = (5, 3, 8)   # every layer: 5x3 filters, 8 of them

  def reward(arch, acc):
    del acc
    return float(np.mean([[l.filter_height, l.filter_width, l.num_filters][i] == planted[i]
                          for l in arch.layers for i in range(3)]))
  experiment.run_search(cfg, str(tmp_path), dataset=digits, reward_fn=reward)
  rows = analysis.read_history(str(tmp_path / "history.jsonl"))
  first = np.mean([r["reward"] for r in rows[:16]])
  derived = [r for r in rows if r["evaluation"] == "derive"]
  assert np.mean([r["reward"] for r in derived]) > 0.85 > first + 0.3
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert all((l["filter_height"], l["filter_width"], l["num_filters"]) == planted
             for l in summary["best"]["arch"]["layers"])


def test_quick_cifar10_search_on_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  cfg = cnn_cifar10_shared.get_config("quick")
  cfg.data.data_dir = str(tmp_path)
  with tfds.testing.mock_data(num_examples=200):
    result = experiment.run_search(cfg, str(tmp_path / "w"))
  rows = analysis.read_history(str(tmp_path / "w" / "history.jsonl"))
  assert len(rows) == 2 * 2 * 2 + 2 and result.best["evaluation"] == "derive"
  assert len(rows[0]["arch"]["layers"]) == 2 and rows[0]["arch"]["pool_after_layers"] == [0]


def test_new_fields_are_checked_and_old_workdirs_still_resume(tmp_path):
  for field, value, message in (("derive_top_k", 99, "derive_samples"),
                                ("lr_schedule", "step", "not one of"),
                                ("momentum", 1.0, r"\[0, 1\)"), ("epochs", 0, ">= 1")):
    cfg = cnn_digits_shared.get_config()
    cfg.shared[field] = value
    with pytest.raises(config_lib.ConfigError, match=rf"^config\.shared\.{field}: .*{message}"):
      config_lib.parse(cfg)
  cfg = cnn_digits_shared.get_config()
  cfg.search_space.layers_increment = 1
  with pytest.raises(config_lib.ConfigError, match=r"^config\.search_space\.layers_increment"):
    config_lib.parse(cfg)
  # A workdir written before config.shared existed: its config.json lacks every shared.* key.
  parsed = config_lib.parse(config_lib.default_config())
  record = workdir_lib.config_record(parsed, parsed.search_space, analysis.base.ACCURACY)
  old = {k: v for k, v in record.items() if not k.startswith("shared.")}
  (tmp_path / "config.json").write_text(json.dumps(old))
  workdir_lib.Workdir(str(tmp_path), record).check()   # no WorkdirMismatchError


def _cli(*args, timeout=300):
  return subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "search.py"), *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_sigkill_and_rerun_gives_the_uninterrupted_history(tmp_path, quick_run):
  args = ["--config", "experiments/configs/cnn_digits_shared.py:quick"]
  whole, killed = quick_run[0], tmp_path / "killed"   # the in-process run of the same config
  history, ckpts = killed / "history.jsonl", killed / "checkpoints"
  rows = lambda: len(history.read_text().splitlines()) if history.exists() else -1
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "search.py"), *args,
         f"--workdir={killed}"]
  kill_points = [("in phase 0, its rows half written", lambda: rows() >= 2),
                 ("at checkpoint 2 (phase 1 saved, its steps.jsonl line maybe not)",
                  lambda: (ckpts / "2").exists() or bool(glob.glob(f"{ckpts}/2.orbax-*")))]
  for what, reached in kill_points:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not reached():
      assert proc.poll() is None and time.time() < deadline, f"not killed {what}"
      time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
  out = _cli(*args, f"--workdir={killed}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert _rows(killed) == _rows(whole) and _steps(killed) == _steps(whole)
  assert sorted(os.listdir(ckpts)) == ["1", "2", "3"]
