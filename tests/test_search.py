"""The search loop end to end: workdir contents, resume, random search, bad configs."""

import contextlib
import glob
import importlib.util
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from nas_jax.tools import analysis
from nas_jax.training import data, trainer
from nas_jax import config as config_lib
from nas_jax import errors, experiment
from nas_jax.core import loop

from toy_space import MLPSpace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments", "configs",
                                                                    name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def comparable(rows):
  """History rows without wall-clock seconds (the only field allowed to differ on resume)."""
  return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def read_rows(workdir):
  with open(os.path.join(workdir, "history.jsonl")) as f:
    return [json.loads(line) for line in f]


class FakeEvaluator:
  """Reward = fraction of wide (64) tanh layers; raises after `crash_after` calls (a 'kill')."""

  def __init__(self, crash_after=None):
    self.calls, self.crash_after = 0, crash_after

  def __call__(self, space, arch, dataset, key):
    if self.crash_after is not None and self.calls >= self.crash_after:
      raise KeyboardInterrupt("simulated kill")
    self.calls += 1
    score = np.mean([w == 64 and a == "tanh" for w, a in zip(arch.widths, arch.activations)])
    return trainer.ChildResult(float(score) + 0.01, {"val_accuracy": float(score),
                                                     "val_accuracies": [float(score)]},
                               0, False, "", 0.0)


def fake_config(steps=6, searcher="reinforce"):
  cfg = load_config("cnn_digits", "quick")
  cfg.search.num_steps = steps
  cfg.search.children_per_step = 4
  cfg.search.searcher = searcher
  cfg.controller.learning_rate = 0.05
  return cfg


@pytest.fixture(scope="module")
def digits():
  return data.load_dataset("digits")


def test_quick_digits_search_writes_workdir(tmp_path, digits):
  cfg = load_config("cnn_digits", "quick")
  result = experiment.run_search(cfg, str(tmp_path), dataset=digits)
  rows = read_rows(tmp_path)
  m = cfg.search.children_per_step
  assert len(rows) == cfg.search.num_steps * m == result.num_evaluated
  assert [(r["step"], r["index"]) for r in rows] == [(s, k) for s in range(cfg.search.num_steps)
                                                     for k in range(m)]
  for r in rows:
    assert set(r) >= {"step", "tokens", "arch", "reward", "val_accuracy", "param_count", "seconds",
                      "failed"}
    assert len(r["arch"]["layers"]) == cfg.search_space.start_layers
    assert r["reward"] == pytest.approx(r["val_accuracy"] ** 3)
    assert r["param_count"] > 0 and not r["failed"]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["best"]["reward"] == max(r["reward"] for r in rows)
  assert summary["num_evaluated"] == len(rows)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == [str(s) for s in
                                                          range(1, cfg.search.num_steps + 1)]
  steps = analysis.read_history(str(tmp_path / "steps.jsonl"))
  assert [s["step"] for s in steps] == list(range(cfg.search.num_steps))
  for s in steps:
    assert s["children"] == m and 0 < s["controller_seconds"] < s["seconds"]
    assert s["children_seconds"] + s["controller_seconds"] + s["save_seconds"] <= s["seconds"]
    assert s["reward_max"] == pytest.approx(max(r["reward"] for r in rows if r["step"] == s["step"]))


def test_children_trained_side_by_side_give_the_search_of_one_after_another(tmp_path, digits):
  histories = {}
  for n in (1, 3):
    cfg = load_config("cnn_digits", "quick")
    cfg.search.num_steps = 2
    cfg.child.parallel_children = n
    experiment.run_search(cfg, str(tmp_path / str(n)), dataset=digits)
    histories[n] = comparable(read_rows(tmp_path / str(n)))
  assert len(histories[1]) == 2 * cfg.search.children_per_step
  assert histories[3] == histories[1]  # the same children, rewards and controller updates


def test_interrupted_search_resumes_to_the_same_history(tmp_path):
  cfg = fake_config(steps=6)
  whole = tmp_path / "whole"
  experiment.run_search(cfg, str(whole), space=MLPSpace(), dataset=_NO_DATA,
                    evaluate_fn=FakeEvaluator())
  broken = tmp_path / "broken"
  for crash_after in (5, 3, 6):  # interrupted three times, mid-step and at step ends
    with pytest.raises(KeyboardInterrupt):
      experiment.run_search(cfg, str(broken), space=MLPSpace(), dataset=_NO_DATA,
                        evaluate_fn=FakeEvaluator(crash_after))
  experiment.run_search(cfg, str(broken), space=MLPSpace(), dataset=_NO_DATA,
                    evaluate_fn=FakeEvaluator())
  assert comparable(read_rows(broken)) == comparable(read_rows(whole))
  assert len(read_rows(whole)) == 24
  steps = analysis.read_history(str(broken / "steps.jsonl"))
  assert [s["step"] for s in steps] == list(range(6))   # no step logged twice after the resumes


@pytest.mark.slow
def test_controller_learns_and_beats_random_search_on_a_fake_reward(tmp_path):
  results = {}
  for searcher in ("reinforce", "random"):
    cfg = fake_config(steps=40, searcher=searcher)
    experiment.run_search(cfg, str(tmp_path / searcher), space=MLPSpace(), dataset=_NO_DATA,
                      evaluate_fn=FakeEvaluator())
    rewards = [r["reward"] for r in read_rows(tmp_path / searcher)]
    results[searcher] = (np.mean(rewards[:16]), np.mean(rewards[-40:]))
  first, last = results["reinforce"]
  assert last > first + 0.3  # the controller moves towards wide tanh layers
  assert last > results["random"][1] + 0.3


def test_workdir_of_another_config_is_refused_and_kept(tmp_path):
  cfg = fake_config(steps=2)
  experiment.run_search(cfg, str(tmp_path), space=MLPSpace(), dataset=_NO_DATA,
                    evaluate_fn=FakeEvaluator())
  before = {p: (tmp_path / p).read_bytes() for p in ("history.jsonl", "config.json",
                                                     "summary.json")}
  cfg.child.epochs = 7
  with pytest.raises(errors.WorkdirMismatchError, match="config.child.epochs"):
    experiment.run_search(cfg, str(tmp_path), space=MLPSpace(), dataset=_NO_DATA,
                      evaluate_fn=FakeEvaluator())
  assert before == {p: (tmp_path / p).read_bytes() for p in before}
  # Changing only the budget is a continuation, not another search.
  cfg.child.epochs = load_config("cnn_digits", "quick").child.epochs
  cfg.search.num_steps = 3
  experiment.run_search(cfg, str(tmp_path), space=MLPSpace(), dataset=_NO_DATA,
                    evaluate_fn=FakeEvaluator())
  assert len(read_rows(tmp_path)) == 3 * cfg.search.children_per_step


@pytest.mark.parametrize("field,value,message", [
    ("child.epochs", 0, "config.child.epochs: must be >= 1"),
    ("child.learning_rate", -0.1, "config.child.learning_rate: must be a finite number > 0"),
    ("search_space.num_filters", (), "config.search_space.num_filters: empty choice list"),
    ("search.searcher", "ppo", "config.search.searcher: 'ppo' is not one of"),
    ("data.name", "mnist", "config.data.name"),
    ("controller.baseline_decay", 1.0, "config.controller.baseline_decay"),
    ("child.reward_last_epochs", 9, "config.child.reward_last_epochs: must be <= "),
    ("child.executor", "pmap", "config.child.executor: 'pmap' is not one of"),
    ("child.num_devices", -1, "config.child.num_devices: must be >= 0"),
    ("search.gather_timeout_s", 0.0, "config.search.gather_timeout_s: must be a finite number"),
    ("data.data_dir", "/nonexistent/nas_jax", "config.data.data_dir: '/nonexistent/nas_jax' is not"),
])
def test_bad_values_name_the_field(field, value, message):
  cfg = load_config("cnn_digits")
  section, key = field.split(".")
  cfg[section][key] = value
  with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(")):
    config_lib.validate(cfg)


def test_vmap_executor_with_predicted_strides_is_refused():
  cfg = load_config("cnn_digits")
  cfg.child.executor = "vmap"
  cfg.search_space.predict_strides = True
  with pytest.raises(config_lib.ConfigError, match="config.child.executor: 'vmap'"):
    config_lib.validate(cfg)
  cfg.search_space.predict_strides = False
  cfg.search_space.filter_widths = (1, 2, 3)
  with pytest.raises(config_lib.ConfigError, match=r"config.search_space.filter_widths: .*\[2\]"):
    config_lib.validate(cfg)


def test_vmap_executor_runs_a_quick_search(tmp_path, digits):
  cfg = load_config("cnn_digits", "quick")
  cfg.child.executor = "vmap"
  experiment.run_search(cfg, str(tmp_path), dataset=digits)
  rows = read_rows(tmp_path)
  assert len(rows) == cfg.search.num_steps * cfg.search.children_per_step
  assert all(not r["failed"] and 0 < r["val_accuracy"] <= 1 for r in rows)


def test_unknown_keys_and_wrong_types_name_the_field():
  cfg = load_config("cnn_digits")
  cfg.unlock()
  cfg.child.epoch = 3
  with pytest.raises(config_lib.ConfigError, match="config.child.epoch: unknown key.*child.epochs"):
    config_lib.validate(cfg)
  # A config built by hand (no type-safe defaults underneath) still gets its types checked.
  cfg = ml_collections.ConfigDict(load_config("cnn_digits").to_dict(), type_safe=False)
  cfg.child.epochs = "ten"
  with pytest.raises(config_lib.ConfigError, match="config.child.epochs: expected int"):
    config_lib.validate(cfg)


def test_experiment_configs_validate():
  for name in ("cnn_digits", "cnn_cifar10"):
    for arg in (None, "quick"):
      config_lib.validate(load_config(name, arg))
  paper = load_config("cnn_cifar10")
  assert paper.child.epochs == 50 and paper.controller.learning_rate == 6e-4
  assert paper.search.num_steps * paper.search.children_per_step == 12800
  bad = load_config("cnn_digits", "quick")
  bad.child.lr_schedule = "linear"
  with pytest.raises(config_lib.ConfigError, match=r"config.child.lr_schedule: 'linear' is not "
                     r"one of \['constant', 'step', 'cosine'\]"):
    config_lib.validate(bad)


def _cli(*args, timeout=300):
  return subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "search.py"), *args],
                        capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("override,message", [
    ("--config.child.epoch=3", "names no config field"),
    ("--config.child.epochs=0", "config.child.epochs: must be >= 1"),
    ("--config.search_space.num_filters=()", "config.search_space.num_filters: empty choice"),
])
def test_cli_bad_config_exits_with_one_line_and_writes_nothing(tmp_path, override, message):
  workdir = tmp_path / "w"
  out = _cli("--config", "experiments/configs/cnn_digits.py:quick", f"--workdir={workdir}",
             override)
  assert out.returncode != 0
  assert message in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith("error:")
  assert not workdir.exists()


def test_cli_missing_cifar10_is_one_clear_line(tmp_path):
  out = _cli("--config", "experiments/configs/cnn_cifar10.py:quick", f"--workdir={tmp_path / 'w'}",
             f"--config.data.data_dir={tmp_path}")
  assert out.returncode == 2
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error:") and "CIFAR-10" in last and str(tmp_path) in last


@pytest.mark.slow
def test_sigkill_and_rerun_gives_the_uninterrupted_history(tmp_path):
  args = ["--config", "experiments/configs/cnn_digits.py:quick", "--config.search.num_steps=3"]
  whole = tmp_path / "whole"
  out = _cli(*args, f"--workdir={whole}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Unable to initialize backend" not in out.stderr   # backends that cannot be there
  killed = tmp_path / "killed"
  history, ckpts = killed / "history.jsonl", killed / "checkpoints"
  rows = lambda: len(history.read_text().splitlines()) if history.exists() else -1
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "search.py"), *args,
         f"--workdir={killed}"]
  # Each kill waits for what the process has written (2 children per step, 3 steps).
  kill_points = [
      ("in the first step, its first child in training", lambda: rows() == 0),
      ("in step 1, its rows half written", lambda: rows() >= 3),
      ("at checkpoint 2: while orbax writes it, or right after (before the step's line in "
       "steps.jsonl)", lambda: (ckpts / "2").exists() or bool(glob.glob(f"{ckpts}/2.orbax-*"))),
  ]
  for what, reached in kill_points:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not reached():
      assert proc.poll() is None and time.time() < deadline, f"not killed {what}"
      time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
  assert 3 <= rows() < 6 and not (ckpts / "3").exists()
  out = _cli(*args, f"--workdir={killed}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert comparable(read_rows(killed)) == comparable(read_rows(whole))
  metrics = lambda w: [{k: v for k, v in s.items() if not k.endswith("seconds") and k != "children"}
                       for s in analysis.read_history(str(w / "steps.jsonl"))]
  assert metrics(killed) == metrics(whole) and len(metrics(whole)) == 3
  assert sorted(os.listdir(ckpts)) == ["1", "2", "3"]   # no half-written checkpoint left


_NO_DATA = data.Dataset("none", *([np.zeros((1, 1), np.float32)] * 6), num_classes=2, augment=False)


@contextlib.contextmanager
def _absl_warnings():
  """The messages of the WARNING records absl logging emits inside the block."""
  records = []
  handler = logging.Handler(logging.WARNING)
  handler.emit = lambda record: records.append(record.getMessage())
  logger = logging.getLogger("absl")
  logger.addHandler(handler)
  try:
    yield records
  finally:
    logger.removeHandler(handler)


def test_a_space_whose_every_child_raises_stops_with_the_first_error(tmp_path):
  def broken(space, arch, dataset, key):
    return trainer.ChildResult(0.0, {}, 0, True, "ValueError: shapes (3,) and (4,) differ", 0.0)
  with pytest.raises(errors.ChildrenFailError, match="shapes \\(3,\\) and \\(4,\\) differ"):
    experiment.run_search(fake_config(steps=3), str(tmp_path), space=MLPSpace(), dataset=_NO_DATA,
                      evaluate_fn=broken)
  assert len(read_rows(tmp_path)) == 4  # stopped after the first step
  # Rerun with the space fixed: the failed rows stay, and the log says so once, with the way out.
  ok = lambda space, arch, dataset, key: trainer.ChildResult(0.5, {}, 1, False, "", 0.0)
  with _absl_warnings() as warnings:
    experiment.run_search(fake_config(steps=2), str(tmp_path), space=MLPSpace(), dataset=_NO_DATA,
                      evaluate_fn=ok)
  said = [w for w in warnings if "all 4 children it holds failed" in w]
  assert len(said) == 1 and "ValueError: shapes (3,) and (4,) differ" in said[0], warnings
  assert "new --workdir" in said[0]
  assert [r["failed"] for r in read_rows(tmp_path)] == [True] * 4 + [False] * 4


def test_failed_data_loading_leaves_no_workdir_behind(tmp_path):
  cfg = load_config("cnn_cifar10", "quick")
  cfg.data.data_dir = str(tmp_path / "empty")
  os.makedirs(cfg.data.data_dir)
  with pytest.raises(data.DataUnavailableError):
    experiment.run_search(cfg, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
  # A bad split size is a config error naming the field, not a traceback.
  cfg = load_config("cnn_digits", "quick")
  cfg.data.num_validation = 5000
  with pytest.raises(config_lib.ConfigError, match="num_validation"):
    experiment.run_search(cfg, str(tmp_path / "w2"))
  assert not (tmp_path / "w2").exists()


def test_time_left_follows_the_depth_schedule_from_measured_seconds_per_child():
  """3 layers for steps 0-1, 4 for 2-3, 6 for 4-5 (m = 2): time left is per measured depth, an
  unseen depth scaled from the deepest seen, plus the controller's time per step."""
  depths = [3, 3, 4, 4, 6, 6]
  progress = loop.Progress(6, 2, lambda s: depths[s])  # pylint: disable=protected-access
  assert math.isnan(progress.eta(0))
  row = lambda seconds: {"children": 2, "children_seconds": seconds, "controller_seconds": 0.5}
  progress.log(0, 3, np.ones(2), {}, {"entropy": 1.0}, None, row(6.0))   # 3 s per child
  assert progress.eta(0) == pytest.approx(2 * 3 * 1 + 2 * 3 * 4 / 3 * 2 + 2 * 3 * 6 / 3 * 2
                                          + 5 * 0.5)
  progress.log(1, 3, np.ones(2), {}, {"entropy": 1.0}, None, row(2.0))   # now 2 s per child
  progress.log(2, 4, np.ones(2), {}, {"entropy": 1.0}, None, row(10.0))  # 5 s per child at 4
  assert progress.eta(2) == pytest.approx(2 * 5 + 2 * 2 * 5 * 6 / 4 + 3 * 0.5)
  assert loop.duration(125.4) == "2m05s" and loop.duration(float("nan")) == "-"  # pylint: disable=protected-access
