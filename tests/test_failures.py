"""Failures that lose nothing: unreadable checkpoints, children that raise, bad command lines.

Kills (``KeyboardInterrupt`` from a fake child here; SIGKILL of the command line in
``test_search.py::test_sigkill_and_rerun_gives_the_uninterrupted_history``) are followed by a rerun
that must end with the history of an uninterrupted search.
"""

import dataclasses
import glob
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import flax.linen as nn
import jax.numpy as jnp
import pytest

from nas_jax.tools import analysis
from nas_jax.training import data, trainer
from nas_jax import errors, experiment
from nas_jax.core import distributed
from nas_jax import config as config_lib

from test_search import (FakeEvaluator, _NO_DATA, _cli, comparable, fake_config, load_config,
                         read_rows)
from toy_space import MLP, MLPArch, MLPSpace

STEPS = 6   # x 4 children; checkpoints are kept for the last 3 steps


def _run(workdir, crash_after=None):
  """A fake-reward search; returns how many children it evaluated (KeyboardInterrupt = a kill)."""
  ev = FakeEvaluator(crash_after)
  try:
    experiment.run_search(fake_config(STEPS), str(workdir), space=MLPSpace(), dataset=_NO_DATA,
                      evaluate_fn=ev)
  except KeyboardInterrupt:
    assert crash_after is not None
  return ev.calls


def _steps(workdir):
  """steps.jsonl without its wall times."""
  return [{k: v for k, v in r.items() if not k.endswith("seconds")}
          for r in analysis.read_history(os.path.join(workdir, "steps.jsonl"))]


def _checkpoints(workdir):
  return sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=lambda s: (len(s), s))


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
  """The uninterrupted search that every broken one must end up equal to."""
  workdir = tmp_path_factory.mktemp("whole")
  assert _run(workdir) == STEPS * 4
  return workdir


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _truncate(step_dir):
  for path in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _overwrite_arrays(step_dir):
  data_files = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*"))
  assert data_files
  for path in data_files:
    with open(path, "r+b") as f:
      f.write(b"\0" * os.path.getsize(path))


def _delete_state(step_dir):
  shutil.rmtree(os.path.join(step_dir, "state"))


@pytest.mark.parametrize("corrupt", [_truncate, _overwrite_arrays, _delete_state])
def test_an_unreadable_latest_checkpoint_falls_back_to_the_one_before(tmp_path, whole, caplog,
                                                                      corrupt):
  assert _run(tmp_path, crash_after=17) == 17   # killed in step 4, after checkpoint 4
  assert _checkpoints(tmp_path) == ["2", "3", "4"]
  corrupt(str(tmp_path / "checkpoints" / "4"))
  caplog.set_level(logging.WARNING)
  # Step 3 is redone from checkpoint 3 with its children's rows taken from the history; so is the
  # first child of step 4: only the other 7 children of steps 4 and 5 are trained.
  assert _run(tmp_path) == 7
  warnings = _warnings(caplog)
  assert any("checkpoint of controller step 4 is unreadable" in w for w in warnings), warnings
  assert any("restored the checkpoint of controller step 3 instead of step 4" in w
             for w in warnings), warnings
  assert comparable(read_rows(tmp_path)) == comparable(read_rows(whole))
  trained = {3: 0, 4: 3}   # the controller's metrics are the uninterrupted run's
  assert _steps(tmp_path) == [dict(s, children=trained.get(s["step"], s["children"]))
                              for s in _steps(whole)]
  assert _checkpoints(tmp_path) == ["4", "5", "6"]
  assert os.listdir(tmp_path / "checkpoints_unreadable") == ["4"]   # kept for a post-mortem


def test_with_no_readable_checkpoint_the_search_restarts_and_reuses_every_row(tmp_path, whole,
                                                                            caplog):
  assert _run(tmp_path, crash_after=17) == 17
  for step_dir in glob.glob(str(tmp_path / "checkpoints" / "*")):
    _truncate(step_dir)
  before = (tmp_path / "history.jsonl").read_bytes()
  caplog.set_level(logging.WARNING)
  assert _run(tmp_path) == 7   # nothing of steps 0..3 is trained again
  warnings = _warnings(caplog)
  for step in (2, 3, 4):
    assert any(f"checkpoint of controller step {step} is unreadable" in w for w in warnings)
  assert any("no usable checkpoint" in w and "starts from scratch" in w for w in warnings)
  rows = read_rows(tmp_path)
  assert comparable(rows) == comparable(read_rows(whole))
  assert (tmp_path / "history.jsonl").read_bytes().startswith(before)   # rows reused verbatim
  assert [s["step"] for s in _steps(tmp_path)] == list(range(STEPS))


def test_a_half_written_checkpoint_is_ignored(tmp_path, whole, caplog):
  # Killed while saving checkpoint 5: orbax writes into a temporary folder and renames it when
  # done, so what is left is that folder, and no line of step 4 in steps.jsonl.
  assert _run(tmp_path, crash_after=21) == 21
  ckpts = tmp_path / "checkpoints"
  tmp = ckpts / "5.orbax-checkpoint-tmp"   # as orbax names it
  os.rename(ckpts / "5", tmp)
  _truncate(str(tmp))
  steps = (tmp_path / "steps.jsonl").read_text().splitlines()
  (tmp_path / "steps.jsonl").write_text("\n".join(steps[:-1]) + "\n" + steps[-1][:20])
  caplog.set_level(logging.WARNING)
  assert _run(tmp_path) == 3   # step 4's children and step 5's first come from the history
  assert not any("checkpoint" in w for w in _warnings(caplog)), _warnings(caplog)
  assert comparable(read_rows(tmp_path)) == comparable(read_rows(whole))
  assert [s["step"] for s in _steps(tmp_path)] == list(range(STEPS))
  assert _checkpoints(tmp_path) == ["4", "5", "6"]   # the temporary folder is gone


def test_a_kill_between_checkpoint_and_steps_log_redoes_that_step(tmp_path, whole, caplog):
  assert _run(tmp_path, crash_after=21) == 21   # checkpoint 5 saved, then killed
  steps = (tmp_path / "steps.jsonl").read_text().splitlines(keepends=True)
  (tmp_path / "steps.jsonl").write_text("".join(steps[:-1]))   # ... before step 4's line
  caplog.set_level(logging.WARNING)
  assert _run(tmp_path) == 3
  assert any("checkpoint of controller step 5 is newer than steps.jsonl" in w
             for w in _warnings(caplog)), _warnings(caplog)
  assert comparable(read_rows(tmp_path)) == comparable(read_rows(whole))
  # The controller's metrics of the redone step are the uninterrupted run's.
  trained = {4: 0, 5: 3}
  assert _steps(tmp_path) == [dict(s, children=trained.get(s["step"], s["children"]))
                              for s in _steps(whole)]


def test_rows_waiting_to_be_reused_survive_another_kill(tmp_path, whole):
  assert _run(tmp_path, crash_after=17) == 17
  _truncate(str(tmp_path / "checkpoints" / "4"))
  before = (tmp_path / "history.jsonl").read_bytes()
  # Killed again at the first child it trains: the rows of steps 3 and 4 were not rewritten.
  assert _run(tmp_path, crash_after=0) == 0
  assert (tmp_path / "history.jsonl").read_bytes() == before
  assert _run(tmp_path) == 7
  assert comparable(read_rows(tmp_path)) == comparable(read_rows(whole))


@dataclasses.dataclass
class _ThreadCluster(distributed.Cluster):
  """One of the processes of a search, played by a thread; the key-value store is a dict."""
  store: dict = dataclasses.field(default_factory=dict)
  cv: threading.Condition = dataclasses.field(default_factory=threading.Condition)

  def publish(self, key, value):
    with self.cv:
      self.store[key] = value
      self.cv.notify_all()

  def fetch(self, key, timeout_s, poll_s=2.0):
    with self.cv:
      self.cv.wait_for(lambda: key in self.store or "abort" in self.store, timeout=60)
      if key in self.store:
        return self.store[key]
      raise distributed.DistributedError(self.store.get("abort", b"timed out").decode())

  def abort(self, reason):
    with self.cv:
      self.store.setdefault("abort", reason.encode())
      self.cv.notify_all()


def _run_two_processes(monkeypatch, workdir, crash_after=None):
  """A fake-reward search over two processes (threads); returns each one's evaluated children."""
  store, cv, clusters = {}, threading.Condition(), {}
  monkeypatch.setattr(distributed, "current", lambda: clusters[threading.get_ident()])
  evaluators = [FakeEvaluator(crash_after), FakeEvaluator()]
  errors = [None, None]

  def process(i):
    clusters[threading.get_ident()] = _ThreadCluster(i, 2, store=store, cv=cv)
    try:
      experiment.run_search(fake_config(STEPS), str(workdir / f"p{i}"), space=MLPSpace(),
                        dataset=_NO_DATA, evaluate_fn=evaluators[i])
    except BaseException as e:  # pylint: disable=broad-except
      errors[i] = e

  threads = [threading.Thread(target=process, args=(i,)) for i in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=300)
    assert not t.is_alive()
  if crash_after is None:
    assert errors == [None, None], errors
  else:
    assert isinstance(errors[0], KeyboardInterrupt), errors
    assert isinstance(errors[1], distributed.DistributedError), errors
  return [e.calls for e in evaluators]


def test_two_processes_fall_back_to_the_older_checkpoint_together(tmp_path, whole, monkeypatch):
  # Process 0 trains children 0 and 2 of each step, process 1 children 1 and 3.
  _run_two_processes(monkeypatch, tmp_path, crash_after=8)   # killed in step 4
  assert _checkpoints(tmp_path / "p0") == ["2", "3", "4"]
  _truncate(str(tmp_path / "p0" / "checkpoints" / "4"))
  # Process 0 restores checkpoint 3 and sends step 3's rows to process 1: neither retrains them.
  assert _run_two_processes(monkeypatch, tmp_path) == [4, 4]
  assert comparable(read_rows(tmp_path / "p0")) == comparable(read_rows(whole))
  assert not (tmp_path / "p1").exists()


# Children that raise or diverge.

class _NoWidth16(MLPSpace):
  """A user's space with a bug: networks with a 16-wide layer have a shape error."""

  def build(self, arch, num_classes):
    return _BuggyMLP(arch=arch, num_classes=num_classes)


class _BuggyMLP(nn.Module):
  arch: MLPArch
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    logits = MLP(arch=self.arch, num_classes=self.num_classes)(x, train)
    if 16 in self.arch.widths:
      logits = logits @ jnp.ones((7, self.num_classes))
    return logits


@pytest.mark.slow
def test_children_that_raise_are_recorded_as_failed_and_the_search_goes_on(tmp_path):
  cfg = load_config("cnn_digits", "quick")
  cfg.search.num_steps, cfg.search.children_per_step = 3, 4
  dataset = data.load_dataset("digits", max_train=128, seed=0)
  space = _NoWidth16(widths=(4, 8, 16, 32), layers=1)   # a quarter of the children broken
  result = experiment.run_search(cfg, str(tmp_path), space=space, dataset=dataset)
  rows = read_rows(tmp_path)
  assert len(rows) == 12 == result.num_evaluated   # every step ran
  bad = [r for r in rows if 16 in r["arch"]["widths"]]
  good = [r for r in rows if 16 not in r["arch"]["widths"]]
  assert bad and good
  for r in bad:
    assert r["failed"] and r["reward"] == 0.0
    assert r["error"].startswith("TypeError: dot_general requires contracting dimensions to have "
                                 "the same shape"), r["error"]
  assert all(not r["failed"] and r["reward"] > 0 and r["error"] == "" for r in good)
  assert result.best is not None and not result.best["failed"]


class _CannotBuildWidth16(MLPSpace):
  """A user's space whose build() itself raises for one choice."""

  def build(self, arch, num_classes):
    if 16 in arch.widths:
      raise ValueError("width 16 is not supported by this space")
    return super().build(arch, num_classes)


def test_a_step_whose_most_children_raise_one_type_stops_the_search(tmp_path):
  # 3 of 4 width choices are 16, which the space cannot build: most of a step raises ValueError;
  # the search stops with that error instead of learning from their reward 0
  cfg = load_config("cnn_digits", "quick")
  cfg.search.num_steps, cfg.search.children_per_step = 3, 4
  dataset = data.load_dataset("digits", max_train=128, seed=0)
  with pytest.raises(errors.ChildrenFailError, match=r"[34] of the 4 children of step (\d) "
                     r"raised ValueError.*\nValueError: width 16 is not supported") as info:
    experiment.run_search(cfg, str(tmp_path), dataset=dataset,
                          space=_CannotBuildWidth16(widths=(16, 16, 16, 4), layers=1))
  stopped = int(re.search(r"of step (\d)", str(info.value))[1])
  rows = read_rows(tmp_path)
  assert stopped < 2 and len(rows) == 4 * (stopped + 1)   # it stopped there, the step recorded
  last = [r for r in rows if r["step"] == stopped]
  assert 2 * sum(r["failed"] for r in last) > len(last)
  assert all(2 * sum(r["failed"] for r in rows if r["step"] == s) <= 4 for s in range(stopped))


def test_a_child_whose_build_raises_is_recorded_as_failed(tmp_path):
  cfg = load_config("cnn_digits", "quick")
  cfg.search.num_steps, cfg.search.children_per_step = 2, 4
  dataset = data.load_dataset("digits", max_train=128, seed=0)
  experiment.run_search(cfg, str(tmp_path),
                        space=_CannotBuildWidth16(widths=(4, 8, 16, 32), layers=1), dataset=dataset)
  rows = read_rows(tmp_path)
  assert len(rows) == 8
  bad = [r for r in rows if 16 in r["arch"]["widths"]]
  assert bad and len(bad) < 8
  for r in bad:
    assert r["failed"] and r["reward"] == 0.0
    assert r["error"].startswith("ValueError: width 16 is not supported by this space"), r["error"]
    assert "in build" in r["error"]   # the traceback's last frames point at the user's code


def test_a_search_whose_every_child_diverges_goes_on(tmp_path):
  def diverges(space, arch, dataset, key):
    return trainer.ChildResult(0.0, {"val_accuracy": 0.0, "val_accuracies": [0.1]}, 10, True,
                               "FloatingPointError: training loss became nan in epoch 1", 0.0)
  result = experiment.run_search(fake_config(steps=3), str(tmp_path), space=MLPSpace(),
                             dataset=_NO_DATA, evaluate_fn=diverges)
  rows = read_rows(tmp_path)
  assert len(rows) == 12 and result.best is None   # not stopped: divergence is the child's fault
  assert all(r["failed"] and r["reward"] == 0.0 and "loss became nan" in r["error"] for r in rows)


# Bad command lines leave a workdir that holds another search as it was.

def _tree(workdir):
  return {os.path.relpath(os.path.join(d, f), workdir): open(os.path.join(d, f), "rb").read()
          for d, _, files in os.walk(workdir) for f in files}


@pytest.mark.slow
def test_cli_errors_leave_a_workdir_of_another_search_byte_identical(tmp_path):
  cfg = load_config("cnn_digits", "quick")   # the command line's config, run with a fake reward
  workdir = tmp_path / "w"
  experiment.run_search(cfg, str(workdir), dataset=_NO_DATA, evaluate_fn=lambda *a: trainer.ChildResult(
      0.5, {"val_accuracy": 0.5, "val_accuracies": [0.5]}, 1, False, "", 0.0))
  before = _tree(workdir)
  assert {"config.json", "history.jsonl", "steps.jsonl", "summary.json"} <= set(before)
  assert any(p.startswith("checkpoints") for p in before)
  base = ["--config", "experiments/configs/cnn_digits.py:quick", f"--workdir={workdir}"]
  for override, message in [
      ("--config.child.epochs=2", "holds a search with a different config (config.child.epochs"),
      ("--config.search_space.num_filters=()", "config.search_space.num_filters: empty choice"),
      (f"--config.data.data_dir={tmp_path / 'nowhere'}", "config.data.data_dir: "),
      ("--config.child.batch_size=big", "flag --config.child.batch_size=big"),
  ]:
    out = _cli(*base, override)
    assert out.returncode != 0, override
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert _tree(workdir) == before, override


@pytest.mark.parametrize("config,message", [
    ("experiments/configs/no_such_config.py", "No such file or directory"),
    ("experiments/configs/cnn_digits.py:tiny", "unknown argument 'tiny'"),
])
def test_cli_bad_config_file_is_one_line(tmp_path, config, message):
  out = _cli("--config", config, f"--workdir={tmp_path / 'w'}")
  assert out.returncode != 0
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: flag --config") and message in last, out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  assert not (tmp_path / "w").exists()


def test_children_trained_together_that_raise_are_recorded_as_failed(monkeypatch):
  # The vmapped executors train a step's children in one program: an error there (out of memory,
  # say) fails those children, and the search's all-raised rule decides whether to go on.
  from nas_jax.training import cell_children, evaluators  # pylint: disable=import-outside-toplevel

  def out_of_memory(*args, **kwargs):
    raise MemoryError("RESOURCE_EXHAUSTED: out of memory allocating 12 GiB")
  monkeypatch.setattr(cell_children, "evaluate_cells", out_of_memory)
  cfg = load_config("rnn_ptb_cpu", "quick")
  results = evaluators.cells(config_lib.parse(cfg).lm_child)(None, ["cell a", "cell b"], None, [None, None])
  assert len(results) == 2
  assert all(r.failed and r.reward == 0.0 and r.error.startswith("MemoryError: RESOURCE_EXHAUSTED")
             for r in results)


@pytest.mark.parametrize("field, value, message", [
    ("search.children_per_step", 1_000_000, "config.search.children_per_step: at most 4096"),
    ("search_space.start_layers", 10_000, "config.search_space.start_layers: at most 256"),
    ("search_space.convs_per_layer", 1000, "config.search_space.convs_per_layer: at most 16"),
    ("controller.hidden_size", 100_000, "config.controller.hidden_size: at most 4096"),
    ("seed", 2**70, "config.seed: must be in [0, 2**63)")])
def test_sizes_beyond_their_bound_are_refused_naming_the_reason(field, value, message):
  cfg = load_config("cnn_digits")
  section, _, key = field.rpartition(".")
  (cfg[section] if section else cfg)[key] = value
  with pytest.raises(config_lib.ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")
                     .replace(")", r"\)").replace("*", r"\*")):
    config_lib.parse(cfg)


@pytest.mark.parametrize("arch, message", [
    ('{"layers": []}', "no layers"), ("[" * 50_000 + "]" * 50_000, "nested too deep"),
    (" ".join(f"{i}:3x3x8<img" for i in range(300)), "300 layers; at most 256")])
def test_an_arch_that_cannot_be_trained_is_refused_in_one_line(arch, message):
  from nas_jax.spaces import cnn  # pylint: disable=import-outside-toplevel
  with pytest.raises(errors.InputError, match=message):
    cnn.parse_arch(arch, cnn.CNNSpace())


def test_a_checkpoints_path_that_is_a_file_is_refused_touching_nothing(tmp_path):
  workdir = tmp_path / "w"
  experiment.run_search(fake_config(steps=2), str(workdir), space=MLPSpace(), dataset=_NO_DATA,
                        evaluate_fn=FakeEvaluator(), progress=False)
  shutil.rmtree(workdir / "checkpoints")
  (workdir / "checkpoints").write_text("not a folder")
  before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
  cfg = fake_config(steps=3)
  with pytest.raises(errors.WorkdirError, match="checkpoints is a file"):
    experiment.run_search(cfg, str(workdir), space=MLPSpace(), dataset=_NO_DATA,
                          evaluate_fn=FakeEvaluator(), progress=False)
  assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before


def test_a_duplicated_history_row_is_refused_touching_nothing(tmp_path):
  workdir = tmp_path / "w"
  experiment.run_search(fake_config(steps=2), str(workdir), space=MLPSpace(), dataset=_NO_DATA,
                        evaluate_fn=FakeEvaluator(), progress=False)
  lines = (workdir / "history.jsonl").read_text().splitlines(keepends=True)
  (workdir / "history.jsonl").write_text("".join(lines[:3] + [lines[2]] + lines[3:]))
  before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
  with pytest.raises(errors.WorkdirError, match="line 4: a second row of step 0, child 2"):
    experiment.run_search(fake_config(steps=3), str(workdir), space=MLPSpace(), dataset=_NO_DATA,
                          evaluate_fn=FakeEvaluator(), progress=False)
  assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before


@pytest.mark.slow
@pytest.mark.parametrize("delay,second", [(0.0, None), (0.7, None), (1.5, None),
                                          (0.0, 0.05), (0.7, "warned"), (1.5, "exiting")])
def test_ctrl_c_of_the_exact_search_exits_130_without_a_traceback(tmp_path, delay, second):
  """One Ctrl-C, or two: at once (0.05 s later), once the first is acknowledged ("warned"), or
  while the process exits after its last line ("exiting"); each ends in exit 130 and one line."""
  # children train two at a time in a thread pool; Ctrl-C lands anywhere in a step
  proc = subprocess.Popen(
      [sys.executable, "-m", "nas_jax", "search", "--config", "cnn_digits:quick",
       f"--workdir={tmp_path / 'w'}", "--config.search.num_steps=8",
       "--config.search.children_per_step=4"], stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)
  lines = []
  for line in proc.stderr:   # the first step's line: the handler is installed, children training
    lines.append(line)
    if "step 0 (1 of 8)" in line:
      break
  time.sleep(delay)
  proc.send_signal(signal.SIGINT)
  rest = []
  if isinstance(second, float):
    time.sleep(second)
    proc.send_signal(signal.SIGINT)
  elif second:
    wanted = "interrupted: stopping once" if second == "warned" else "interrupted; rerun"
    for line in proc.stderr:
      rest.append(line)
      if wanted in line:
        proc.send_signal(signal.SIGINT)
        break
  rest = "".join(rest) + proc.stderr.read()
  assert proc.wait(timeout=120) == 130, "".join(lines) + rest
  assert "Traceback" not in rest and rest.strip().splitlines()[-1] == (
      "interrupted; rerun the same command to resume")
