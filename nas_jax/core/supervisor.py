"""One process of a multi-process search, run as a child so that a lost peer ends in one line.

When a process of a ``jax.distributed`` job dies or the network fails, JAX's coordination service
notices it within the heartbeat timeout and its agent aborts every surviving process from C++
(``LOG(QFATAL)``: SIGABRT, a C++ stack trace, Python's fault-handler dump). No Python code runs on
that path (``missed_heartbeat_callback`` is not called), so the search cannot catch it.
:func:`supervise` runs the search as a child, passes its output and signals on, and turns that
abort into one ``error:`` line and exit code :data:`PEER_LOST_EXIT_CODE`. The workdir needs no
clean-up: it is consistent whenever a process is killed, and rerunning every process resumes.

Only the standard library is imported here: the supervising process stays small.
"""

from __future__ import annotations

import ctypes
import os
import re
import selectors
import signal
import subprocess
import sys
import time

PEER_LOST_EXIT_CODE = 3

HOLD_S = 10.0  # a coordination-service error line not followed by JAX's abort is shown this late

_FATAL = b"the JAX distributed service detected fatal errors"  # JAX's client.h, before abort()
_LOG_LINE = re.compile(rb"[IWEF]\d{4} [\d:.]+ +\d+ [\w.-]+:\d+\] ")  # absl (C++ or Python) format
_COORDINATION_LINE = re.compile(rb"[EWF]\d{4} [\d:.]+ +\d+ "
                                rb"(coordination_service\w*\.cc|client\.h|preemption_sync_manager\.cc)"
                                rb":\d+\] ")
_PR_SET_PDEATHSIG = 1
_CRASH_SIGNALS = (signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS)


def wanted(argv: list[str]) -> bool:
  """Whether the search command line ``argv`` joins a cluster and does not say ``--nosupervise``.

  Reads the flags as absl spells them (``--distributed``, ``--nodistributed``, ``--flag=value``,
  ``--flag value``); flags inside a ``--flagfile`` are not seen.
  """
  distributed = coordinator = False
  supervise = True
  args = iter(argv[1:])
  for arg in args:
    if arg == "--":
      break
    if not arg.startswith("-"):
      continue
    name, has_value, value = arg.lstrip("-").partition("=")
    truth = value.lower() in ("true", "t", "1") if has_value else True
    if name in ("distributed", "nodistributed"):
      distributed = truth if name == "distributed" else False
    elif name in ("supervise", "nosupervise"):
      supervise = truth if name == "supervise" else False
    elif name == "coordinator_address":
      coordinator = bool(value if has_value else next(args, ""))
  return (distributed or coordinator) and supervise


def supervise(cmd: list[str]) -> int:
  """Runs ``cmd``, one process of a multi-process search, and returns the status to exit with.

  The child's stdout is passed on as it comes, its stderr line by line less JAX's abort report
  after a lost peer. SIGINT, SIGTERM and SIGHUP sent to this process go to the child, which runs in
  its own process group (so that a Ctrl-C reaches it once) and is killed when this process dies
  (Linux; elsewhere it shares this process's group and gets a Ctrl-C from the terminal).

  Returns:
    :data:`PEER_LOST_EXIT_CODE` after one ``error:`` line on stderr when JAX aborted the child
    because another process (or the network) was lost (the child then dies of SIGABRT, or of a
    crash in another of its threads while it is torn down); otherwise the child's exit status. A child
    killed by a signal kills this process with the same signal (128 + the signal if it survives).
  """
  prctl = _prctl()
  parent = os.getpid()

  def setup_child():
    os.setpgid(0, 0)
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl
      os._exit(1)

  own_group = prctl is not None
  proc = None
  forwarded = [signal.SIGTERM, signal.SIGHUP] + [signal.SIGINT] * own_group

  def forward(signum, frame):  # pylint: disable=unused-argument
    if signum in forwarded and proc is not None and proc.poll() is None:
      (os.killpg if own_group else os.kill)(proc.pid, signum)

  for signum in forwarded + [signal.SIGINT]:  # without own_group the terminal's SIGINT is enough
    signal.signal(signum, forward)
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"),
                          preexec_fn=setup_child if own_group else None)
  stderr = _Stderr()
  with selectors.DefaultSelector() as sel:
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    while sel.get_map():
      events = sel.select(timeout=0.5)
      for key, _ in events:
        data = os.read(key.fd, 1 << 16)
        if not data:
          sel.unregister(key.fileobj)
        elif key.fileobj is proc.stdout:
          _write(sys.stdout, data)
        else:
          stderr.feed(data)
      stderr.release_old()
      if not events and proc.poll() is not None:  # exited; a grandchild may hold the pipes
        break
  code = proc.wait()
  # JAX aborts (SIGABRT); another thread may crash while the process is torn down (SIGSEGV seen).
  peer_lost = stderr.fatal and -code in _CRASH_SIGNALS
  stderr.close(show_held=not peer_lost)
  if peer_lost:
    print(f"error: lost contact with the other processes ({stderr.cause()}): a process died or "
          "the network failed; rerun every process with the same command to resume",
          file=sys.stderr, flush=True)
    return PEER_LOST_EXIT_CODE
  if code < 0:
    if -code in (signal.SIGKILL, signal.SIGSTOP):  # no handler can be set for these
      print(f"error: the search process was killed ({signal.Signals(-code).name}; the kernel's "
            "out-of-memory killer sends SIGKILL); rerun the same command to resume",
            file=sys.stderr, flush=True)
      return 128 - code
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
    return 128 - code
  return code


class _Stderr:
  """The child's stderr, passed on line by line; holds back the coordination service's lines."""

  def __init__(self):
    self.partial = b""
    self.held: list[bytes] = []
    self.held_since = 0.0
    self.continued = False  # the last line was held: lines without a log prefix continue it
    self.fatal = False      # JAX is aborting the child: everything after is its crash report

  def feed(self, data: bytes) -> None:
    *lines, self.partial = (self.partial + data).split(b"\n")
    for line in lines:
      self._line(line + b"\n")

  def _line(self, line: bytes) -> None:
    if self.fatal or _COORDINATION_LINE.match(line) or (self.continued
                                                        and not _LOG_LINE.match(line)):
      if not self.held:
        self.held_since = time.monotonic()
      self.held.append(line)
      self.continued = True
      self.fatal = self.fatal or (_FATAL in line and line.startswith(b"F"))
    else:
      self.continued = False
      _write(sys.stderr, line)

  def release_old(self) -> None:
    """Shows held lines that JAX's abort did not follow within HOLD_S (a warning, not a crash)."""
    if self.held and not self.fatal and time.monotonic() - self.held_since > HOLD_S:
      _write(sys.stderr, b"".join(self.held))
      self.held = []

  def close(self, show_held: bool) -> None:
    if self.partial:
      self._line(self.partial)
      self.partial = b""
    if show_held:
      _write(sys.stderr, b"".join(self.held))

  def cause(self) -> str:
    """What JAX's abort says went wrong, in a few words."""
    text = b"".join(self.held).decode(errors="replace")
    status = text.partition("absl::Status:")[2] or text
    status = status.partition("*** Check failure")[0]
    if "stopped sending heartbeats" in status:
      listed = status.partition("heartbeats):")[2].partition("The tasks")[0]
      tasks = re.findall(r"task:(\d+)", listed) or re.findall(r"\d+", listed)
      return (f"process {', '.join(tasks)} stopped sending heartbeats" if tasks else
              "a process stopped sending heartbeats")
    if "Failed to send RPC to coordination service" in status or "Socket closed" in status:
      return "the coordination service on process 0 stopped answering"
    lines = status.strip().splitlines()
    return f"the coordination service reported: {lines[0][:200] if lines else 'an error'}"


def _write(stream, data: bytes) -> None:
  stream.flush()
  view = memoryview(data)
  try:
    while view:
      view = view[os.write(stream.fileno(), view):]
  except BrokenPipeError:  # nobody reads any more; the search goes on
    pass


def _prctl():
  """libc's ``prctl`` (Linux), to kill the child with its supervisor; None elsewhere."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    return ctypes.CDLL(None, use_errno=True).prctl
  except (OSError, AttributeError):
    return None
