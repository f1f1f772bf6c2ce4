"""nas-jax train-lm in a workdir of its own: checkpoints, exact resume after SIGKILL, one-line
errors that leave files as they were, Ctrl-C at exit 130."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmd(workdir, *extra):
  return [sys.executable, "-m", "nas_jax", "train-lm", "--config", "lm_ptb_cpu:quick",
          f"--workdir={workdir}", "--config.lm.epochs=4", "--compilation_cache_dir=", *extra]


def _numbers(workdir):
  m = json.load(open(os.path.join(workdir, "metrics.json")))
  return ([{k: v for k, v in e.items() if k not in ("seconds", "tokens_per_sec")}
           for e in m["epochs"]], m["best_valid_ppl"], m["test_ppl"])


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
  w = tmp_path_factory.mktemp("lm") / "whole"
  out = subprocess.run(_cmd(w), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return w


@pytest.mark.slow
def test_a_sigkilled_run_resumes_to_the_numbers_of_an_uninterrupted_one(tmp_path, whole):
  broken = tmp_path / "broken"
  proc = subprocess.Popen(_cmd(broken), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not (broken / "checkpoints" / "2").is_dir():   # killed after its second epoch
    assert time.time() < deadline and proc.poll() is None
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (broken / "metrics.json").exists()
  out = subprocess.run(_cmd(broken), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resumed after epoch" in out.stderr
  assert _numbers(broken) == _numbers(whole)
  # a finished workdir is read back, not trained again
  again = subprocess.run(_cmd(broken), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0 and "epoch 1/4" not in again.stderr


@pytest.mark.slow
def test_another_config_in_the_workdir_is_refused_leaving_it_as_it_was(tmp_path, whole):
  before = {p: open(os.path.join(whole, p), "rb").read() for p in ("config.json", "metrics.json")}
  out = subprocess.run(_cmd(whole, "--config.lm.hidden_size=16"), cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 2
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: workdir") and "config.lm.hidden_size: it has 8, now 16" in last
  assert {p: open(os.path.join(whole, p), "rb").read() for p in before} == before


def test_a_workdir_that_is_a_file_or_unwritable_is_one_line(tmp_path):
  a_file = tmp_path / "file"
  a_file.write_text("mine")
  out = subprocess.run(_cmd(a_file), cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
      f"error: --workdir {a_file}: a file, not a directory; give a directory"]
  assert a_file.read_text() == "mine"
  if os.geteuid() == 0:
    return  # root writes into a read-only folder
  parent = tmp_path / "ro"
  parent.mkdir()
  parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
  out = subprocess.run(_cmd(parent / "w"), cwd=ROOT, capture_output=True, text=True, timeout=300)
  parent.chmod(stat.S_IRWXU)
  assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
  assert out.stderr.startswith("error: cannot create")


@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line_and_the_rerun_finishes(tmp_path, whole):
  w = tmp_path / "w"
  proc = subprocess.Popen(_cmd(w), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  deadline = time.time() + 300
  while not (w / "checkpoints" / "1").is_dir():
    assert time.time() < deadline and proc.poll() is None
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-2000:]
  assert "Traceback" not in err
  assert err.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"
  out = subprocess.run(_cmd(w), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0 and _numbers(w) == _numbers(whole)
