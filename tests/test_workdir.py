"""A workdir never loses a row: damaged files are refused, one search at a time, I/O errors and
Ctrl-C are one line and resume exactly."""

import builtins
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from nas_jax.core import workdir as workdir_lib

from test_failures import _run, _tree, whole  # noqa: F401  (whole is a fixture)
from test_search import ROOT, comparable, read_rows

HISTORY, STEPS_LOG = "history.jsonl", "steps.jsonl"


@pytest.fixture
def done(tmp_path, whole):  # noqa: F811
  """A copy of the finished search's workdir."""
  copy = tmp_path / "w"
  subprocess.run(["cp", "-a", str(whole), str(copy)], check=True)
  (copy / ".lock").write_text("4242\n")   # another process's pid: a refused run leaves it
  return copy


def _edit_line(path, number, text):
  lines = path.read_bytes().split(b"\n")
  lines[number - 1] = text
  path.write_bytes(b"\n".join(lines))


@pytest.mark.parametrize("bad", [
    b"garbage",
    b'{"step": 1, "index": 2, "tokens": [1, 2',   # cut mid-line, in the middle of the file
    b'{"hello": "world"}',                        # valid JSON that is not a row
    b'[1, 2, 3]',
    b'{"step": "1", "index": 0, "tokens": [], "reward": 0.5, "failed": false}',
])
def test_a_damaged_history_line_is_refused_and_nothing_changes(done, bad):
  _edit_line(done / HISTORY, 7, bad)
  before = _tree(done)
  with pytest.raises(workdir_lib.WorkdirError, match=f"{HISTORY}, line 7: not a row"):
    _run(done)
  assert _tree(done) == before


def test_a_damaged_steps_line_is_refused_and_nothing_changes(done):
  _edit_line(done / STEPS_LOG, 2, b"{not json")
  before = _tree(done)
  with pytest.raises(workdir_lib.WorkdirError, match=f"{STEPS_LOG}, line 2"):
    _run(done)
  assert _tree(done) == before


def test_only_a_last_line_cut_by_a_kill_is_dropped(tmp_path, whole):  # noqa: F811
  assert _run(tmp_path, crash_after=9) == 9   # killed in step 2
  with open(tmp_path / HISTORY, "ab") as f:
    f.write(b'{"step": 2, "index": 1, "tok')  # what a kill in the middle of a write leaves
  _run(tmp_path)
  assert comparable(read_rows(tmp_path)) == comparable(read_rows(whole))


@pytest.mark.parametrize("damage", ["delete", "shorten"])
def test_a_history_shorter_than_the_checkpoint_is_refused(done, damage):
  history = done / HISTORY
  if damage == "delete":
    history.unlink()
  else:
    history.write_bytes(b"".join(history.read_bytes().splitlines(keepends=True)[:10]))
  before = _tree(done)
  with pytest.raises(workdir_lib.WorkdirError, match="lacks .* rows of the controller steps"):
    _run(done)
  assert _tree(done) == before


def test_a_deleted_steps_log_is_a_warning(done, whole, caplog):  # noqa: F811
  (done / STEPS_LOG).unlink()
  with caplog.at_level(logging.WARNING):
    assert _run(done) == 0
  assert any("steps.jsonl is missing" in r.getMessage() for r in caplog.records)
  assert comparable(read_rows(done)) == comparable(read_rows(whole))


def test_a_second_search_on_a_workdir_in_use_is_refused(done):
  holder = workdir_lib.take_lock(str(done / ".lock"), RuntimeError)   # a running search's lock
  try:
    before = _tree(done)
    with pytest.raises(workdir_lib.WorkdirError, match=f"{done} is in use by another search "
                       f"\\(pid {os.getpid()}\\)"):
      _run(done)
    assert _tree(done) == before
  finally:
    holder.close()
  assert _run(done) == 0   # free again once the first one ends


def test_a_read_only_workdir_is_one_error_naming_the_path(done, monkeypatch):
  real_open = builtins.open

  def read_only(path, mode="r", *args, **kwargs):
    if str(path).startswith(str(done)) and any(c in mode for c in "wa+"):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    return real_open(path, mode, *args, **kwargs)
  monkeypatch.setattr(builtins, "open", read_only)
  before = _tree(done)
  with pytest.raises(workdir_lib.WorkdirError) as e:
    _run(done)
  assert str(done) in str(e.value) and "Read-only file system" in str(e.value)
  assert "\n" not in str(e.value)
  assert _tree(done) == before


def _cli(*args, **kwargs):
  return subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "search.py"), *args],
                        capture_output=True, text=True, timeout=300, cwd=ROOT, **kwargs)


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
  path = tmp_path / "notadir"
  path.write_text("keep me")
  out = _cli("--config", "experiments/configs/cnn_digits.py:quick", f"--workdir={path}")
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == (
      f"error: --workdir {path} is a file, not a directory; give a directory")
  assert "Traceback" not in out.stderr and path.read_text() == "keep me"


# A full disk, played by a file-size limit: writes past it fail with EFBIG ("File too large").
_LIMITED = textwrap.dedent("""
    import resource, signal, sys
    sys.path.insert(0, "tests")
    from nas_jax import errors
    from test_failures import _run
    limit = int(sys.argv[2])
    if limit:
      signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
      resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
      _run(sys.argv[1])
    except errors.WorkdirError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
""")


@pytest.mark.parametrize("text, code", [
    ('Error writing local file "/w/checkpoints/0/d": Failed to write: File too large '
     "[os_error_code=27] [source locations='file.cc:12']", 27),
    # The shape CI met: a JSON spec between the message and the code.
    ("Error writing \"d\": [tensorstore_spec='{\"driver\": \"file\", \"recheck\": true}'] "
     "[os_error_code=27]", 27),
    ("Error: x [os_error_code='28']", 28)])
def test_a_tensorstore_error_is_reported_in_the_systems_words(text, code):
  assert workdir_lib._cause(ValueError(text)) == f"{os.strerror(code)} (errno {code})"


@pytest.mark.slow
@pytest.mark.parametrize("limit", [40_000,   # config.json fits, the first checkpoint does not
                                   3_000])   # ... nor the TensorBoard events
def test_a_full_disk_is_one_line_and_the_rerun_resumes_exactly(tmp_path, whole, limit):  # noqa: F811
  w = tmp_path / "w"
  run = lambda lim: subprocess.run([sys.executable, "-c", _LIMITED, str(w), str(lim)],
                                   capture_output=True, text=True, timeout=300, cwd=ROOT)
  out = run(limit)
  assert out.returncode == 2, out.stderr[-3000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, out.stderr[-3000:]
  last = errors[0]
  assert last.startswith("error: cannot ") and "File too large" in last and str(w) in last, last
  # Orbax's own error logs of the failed save are not shown (tensorstore's C threads may still
  # print "Event loop is closed" tracebacks of the abandoned writes, which we cannot intercept).
  assert "_SignalingThread.run() raised" not in out.stderr
  assert "atexit" not in out.stderr and "tensorboardX" not in out.stderr, out.stderr[-3000:]
  out = run(0)
  assert out.returncode == 0, out.stderr[-3000:]
  assert comparable(read_rows(w)) == comparable(read_rows(whole))


@pytest.mark.slow
def test_ctrl_c_stops_with_one_line_and_exit_130_then_resumes(tmp_path):
  args = ["experiments/search.py", "--config", "experiments/configs/cnn_digits.py:quick",
          "--config.search.num_steps=3",
          f"--workdir={tmp_path / 'w'}"]
  proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  history = tmp_path / "w" / HISTORY
  deadline = time.time() + 240
  while not (history.exists() and history.read_text().count("\n") >= 1):
    assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-3000:]
  assert err.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"
  assert "Traceback" not in err
  out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert len(read_rows(tmp_path / "w")) == 3 * 2


def test_a_workdir_written_before_a_config_field_existed_still_resumes(tmp_path):
  """A field added later (child.lr_schedule) is absent from old config.json files: its old value
  is the default, so the old workdir is the same search; another value is another search."""
  record = {"seed": 0, "child.epochs": 4, "child.lr_schedule": "constant"}
  old = {k: v for k, v in record.items() if k != "child.lr_schedule"}
  (tmp_path / "config.json").write_text(json.dumps(old))
  workdir_lib.Workdir(str(tmp_path), record).check()
  with pytest.raises(workdir_lib.WorkdirMismatchError, match="config.child.lr_schedule: workdir "
                     "has None, now 'step'"):
    workdir_lib.Workdir(str(tmp_path), dict(record, **{"child.lr_schedule": "step"})).check()
