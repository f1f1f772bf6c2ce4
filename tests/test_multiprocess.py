"""One search over two local processes (jax.distributed on 127.0.0.1, gloo for collectives)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from nas_jax.core.supervisor import PEER_LOST_EXIT_CODE

ROOT = os.path.join(os.path.dirname(__file__), "..")
_ARGS = ["--config", "experiments/configs/cnn_digits.py:quick",
         "--config.search.children_per_step=4"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, *extra, process_id=None, port=None, log=None):
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "search.py"), *_ARGS,
         f"--workdir={workdir}", *extra]
  if process_id is not None:
    cmd += [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
            f"--process_id={process_id}"]
  return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                          stdout=subprocess.DEVNULL, stderr=open(log, "w"), text=True)


def _rows(workdir, name="history.jsonl"):
  return [json.loads(line) for line in open(os.path.join(workdir, name))]


def _key(row):
  return row["step"], row["index"], row["tokens"], row["reward"], row["param_count"]


def _losses(workdir):
  return [s["loss"] for s in _rows(workdir, "steps.jsonl")]


def _kill_machine(proc):
  """SIGKILLs a supervised search process and its child (the search itself), as a dead host would.

  Killing only the supervisor would also kill the child (PR_SET_PDEATHSIG), and killing only the
  child would make the supervisor exit with the same signal; a machine that dies kills both at once.
  """
  children = open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()
  assert children, "the search did not run under its supervisor"
  for pid in [*map(int, children), proc.pid]:
    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
  """The workdir of an uninterrupted one-process search, which the multi-process runs reproduce."""
  tmp = tmp_path_factory.mktemp("one_process")
  proc = _start(tmp / "single", log=tmp / "single.log")
  assert proc.wait(timeout=600) == 0, (tmp / "single.log").read_text()[-3000:]
  return tmp / "single"


@pytest.mark.slow
def test_two_processes_give_the_same_trajectory_as_one(tmp_path, one_process_run):
  port = _free_port()
  procs = [_start(tmp_path / f"p{i}", process_id=i, port=port, log=tmp_path / f"p{i}.log")
           for i in range(2)]
  for p, name in zip(procs, ["p0", "p1"]):
    assert p.wait(timeout=600) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
  assert [_key(r) for r in _rows(tmp_path / "p0")] == [_key(r) for r in _rows(one_process_run)]
  assert _losses(tmp_path / "p0") == _losses(one_process_run)
  assert not (tmp_path / "p1").exists()   # only process 0 writes


_SHARED = ["--config", "experiments/configs/cnn_digits_shared.py:quick",
           "--config.shared.children_per_batch=2", "--config.search.children_per_step=2"]


@pytest.mark.slow
def test_a_shared_search_over_two_processes_is_the_one_process_search(tmp_path):
  """Weight sharing over 2 processes of 1 CPU device each: each trains 1 of the minibatch's 2
  architectures on its half of the examples, the gradients averaged over gloo; the history is
  the one-process search's (here exactly; in general up to the order of floating-point sums)."""
  def start(name, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "search.py"), *_SHARED,
           f"--workdir={tmp_path / name}", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{name}.log", "w"))
  one = start("one")
  assert one.wait(timeout=600) == 0, (tmp_path / "one.log").read_text()[-3000:]
  port = _free_port()
  procs = [start(f"p{i}", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                 f"--process_id={i}") for i in range(2)]
  for i, p in enumerate(procs):
    assert p.wait(timeout=600) == 0, (tmp_path / f"p{i}.log").read_text()[-3000:]
  assert "weight sharing on 2 device(s): 2 architecture(s) per minibatch, 1 per device" in (
      tmp_path / "p0.log").read_text()
  key = lambda r: (r["step"], r["index"], r["tokens"], r["reward"], r.get("evaluation"))
  assert [key(r) for r in _rows(tmp_path / "p0")] == [key(r) for r in _rows(tmp_path / "one")]
  losses = lambda w: [s["train_loss"] for s in _rows(w, "steps.jsonl") if "train_loss" in s]
  assert losses(tmp_path / "p0") == pytest.approx(losses(tmp_path / "one"), rel=1e-6)
  assert not (tmp_path / "p1").exists()   # only process 0 writes


@pytest.mark.slow
def test_an_error_in_one_process_stops_the_other_with_its_message(tmp_path):
  # Process 0's workdir belongs to another search: it refuses it, and process 1 must not wait.
  (tmp_path / "p0").mkdir()
  (tmp_path / "p0" / "config.json").write_text(json.dumps({"seed": 12345}))
  port = _free_port()
  procs = [_start(tmp_path / f"p{i}", process_id=i, port=port, log=tmp_path / f"p{i}.log")
           for i in range(2)]
  # Both end (within wait's limit) although process 1's gather waits up to
  # search.gather_timeout_s (a day by default): it was told, it did not time out.
  codes = [p.wait(timeout=300) for p in procs]
  assert codes == [2, 2]
  err1 = (tmp_path / "p1.log").read_text().strip().splitlines()[-1]
  assert err1.startswith("error: process 0 stopped: WorkdirMismatchError"), err1


@pytest.mark.slow
@pytest.mark.parametrize("killed", [1, 0])   # 0 also hosts the coordination service
def test_a_killed_process_stops_the_other_within_the_heartbeat_timeout(tmp_path, killed):
  port = _free_port()
  extra = ("--heartbeat_timeout_s=5", "--config.search.num_steps=50")
  procs = [_start(tmp_path / f"p{i}", *extra, process_id=i, port=port,
                  log=tmp_path / f"p{i}.log") for i in range(2)]
  log0 = tmp_path / "p0.log"
  deadline = time.time() + 300
  while "(1 of 50)" not in log0.read_text():   # both are in the search loop
    assert time.time() < deadline and procs[0].poll() is None, log0.read_text()[-3000:]
    time.sleep(0.5)
  _kill_machine(procs[killed])
  t0 = time.time()
  survivor = 1 - killed
  code = procs[survivor].wait(timeout=120)
  elapsed = time.time() - t0
  assert procs[killed].wait(timeout=10) == -signal.SIGKILL
  log = (tmp_path / f"p{survivor}.log").read_text()
  assert code == PEER_LOST_EXIT_CODE, log[-3000:]
  assert elapsed < 30, elapsed
  errors = [line for line in log.splitlines() if line.startswith("error:")]
  cause = ("process 1 stopped sending heartbeats" if killed == 1 else
           "the coordination service on process 0 stopped answering")
  assert len(errors) == 1 and cause in errors[0] and "rerun every process" in errors[0], errors
  for noise in ("Fatal Python error", "Check failure", "coordination_service", "Traceback"):
    assert noise not in log, log[-3000:]


@pytest.mark.slow
def test_processes_with_different_configs_refuse_to_run(tmp_path):
  port = _free_port()
  procs = [_start(tmp_path / f"p{i}", f"--config.seed={i}", process_id=i, port=port,
                  log=tmp_path / f"p{i}.log") for i in range(2)]
  codes = [p.wait(timeout=300) for p in procs]
  assert codes == [2, 2]
  err1 = (tmp_path / "p1.log").read_text().strip().splitlines()[-1]
  assert "runs another config than process 0" in err1, err1
  err0 = (tmp_path / "p0.log").read_text().strip().splitlines()[-1]
  assert err0.startswith("error: process 1 stopped: DistributedError"), err0


class _FakeKeyValueStore:
  """The coordination service client's key-value calls, over a dict (refusing values > 1 MiB)."""

  def __init__(self):
    self.values = {}

  def key_value_set_bytes(self, key, value):
    assert len(value) <= (1 << 20) + 4, "gRPC would refuse this message"
    self.values[key] = value

  def blocking_key_value_get_bytes(self, key, timeout_ms):
    return self.values[key]

  def key_value_try_get_bytes(self, key):
    return self.values[key]


def test_large_values_travel_in_chunks(monkeypatch):
  from nas_jax.core import distributed  # pylint: disable=import-outside-toplevel
  store = _FakeKeyValueStore()
  monkeypatch.setattr(distributed.Cluster, "_client", lambda self: store)
  cluster = distributed.Cluster(0, 2, "nas_jax/run9")
  big = bytes(range(256)) * (10 * 1024 + 7)     # 2.5 MiB: three chunks
  cluster.publish("start/info", big)
  cluster.publish("empty", b"")
  assert sorted(store.values) == ["nas_jax/run9/empty", "nas_jax/run9/start/info",
                                  "nas_jax/run9/start/info#1", "nas_jax/run9/start/info#2"]
  assert distributed.Cluster(1, 2, "nas_jax/run9").fetch("start/info", timeout_s=1) == big
  assert cluster.fetch("empty", timeout_s=1) == b""


_FATAL_LINE = ("F1202 00:12:34.567890   4321 client.h:77] Terminating process because the JAX "
               "distributed service detected fatal errors. absl::Status: UNAVAILABLE: The "
               "following tasks are unhealthy (stopped sending heartbeats):\n"
               "/job:jax_worker/replica:0/task:1\nThe tasks have crashed.")


def _supervised(child_code: str):
  """Runs ``child_code`` in a child of supervisor.supervise (in a fresh process: a child killed by
  a signal kills its supervisor with the same signal)."""
  child = [sys.executable, "-c", child_code]
  return subprocess.run(
      [sys.executable, "-c", "import sys; from nas_jax.core import supervisor; "
       f"sys.exit(supervisor.supervise({child!r}))"],
      capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize("crash", ["SIGABRT", "SIGSEGV"])
def test_jax_abort_after_a_lost_peer_is_one_line_even_when_a_thread_crashes_on_the_way(crash):
  """After JAX's fatal line the child dies of SIGABRT, or of SIGSEGV when another thread crashes
  while the process is torn down (seen in CI): both are the lost peer, in one line."""
  out = _supervised(
      "import faulthandler, os, signal, sys; faulthandler.enable(); print('step 1/50', "
      f"file=sys.stderr, flush=True); sys.stderr.write({_FATAL_LINE!r} + '\\n'); "
      f"sys.stderr.flush(); os.kill(os.getpid(), signal.{crash})")
  assert out.returncode == PEER_LOST_EXIT_CODE, out.stderr
  lines = out.stderr.strip().splitlines()
  assert lines[0] == "step 1/50" and len(lines) == 2, out.stderr
  assert lines[1].startswith("error: lost contact with the other processes (process 1 stopped "
                             "sending heartbeats)"), lines[1]


def test_a_crash_without_jax_abort_is_passed_on_as_it_is():
  out = _supervised("import faulthandler, os, signal; faulthandler.enable(); "
                    "os.kill(os.getpid(), signal.SIGSEGV)")
  assert out.returncode == -signal.SIGSEGV
  assert "Fatal Python error: Segmentation fault" in out.stderr
  assert "error: lost contact" not in out.stderr
