"""A search's workdir: everything it writes, and the rules that keep every row.

Files (written by process 0 only; the other processes of a search get a :class:`NoWorkdir`):

* ``config.json``: the config the workdir belongs to, with the space's class and module and the
  metric that ranks its children (a different config is refused);
* ``history.jsonl``: one line per evaluated architecture, appended as soon as it is evaluated;
* ``steps.jsonl``: one line per controller step (rewards, the controller's metrics, timings); a
  step is done once its line is written;
* ``checkpoints/``: orbax checkpoints of the searcher state after each controller step;
* ``summary.json``: the best architecture so far;
* ``tensorboard/``: TensorBoard scalars per controller step (``nas_jax.core.summaries``);
* ``.lock``: held (``flock``) while a search runs, so a second search on the workdir is refused.

What is refused rather than repaired, leaving every file as it was: a history or steps line that
does not parse or is not a row (only a last line cut short by a kill, with no newline, is
dropped); a history that lacks rows of steps the checkpoint says are done; a workdir of another
config or in use by another search. A checkpoint that does not restore is moved aside to
``checkpoints_unreadable/`` and the one before is used; the rows of the later steps are reused, so
no child is trained twice. Every ``OSError`` (disk full, read-only, a path that is a file) becomes
one :class:`WorkdirError` naming the path and the cause; what was written before stays consistent,
and the same command resumes once the cause is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging as logging_std
import os
import re
import shutil
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from nas_jax.errors import WorkdirError, WorkdirMismatchError  # noqa: F401  (public here too)
from nas_jax.spaces import base
from nas_jax.core import history, summaries
from nas_jax.core.history import (  # noqa: F401  (public here too)
    ADDED_FIELDS, DERIVED_KEYS, PER_HOST, RESUMABLE_CHANGES, config_record, run_digest)

@contextlib.contextmanager
def _io(what: str, path: str):
  """Turns an OSError into one WorkdirError line: what was being done, on which path, why."""
  try:
    yield
  except OSError as e:
    cause = e.strerror or str(e)
    hint = {errno.ENOSPC: "free some space and rerun the same command to resume",
            errno.EFBIG: "free some space and rerun the same command to resume",
            errno.EROFS: "use a writable --workdir", errno.EACCES: "use a writable --workdir",
            errno.ENOTDIR: "--workdir must be a directory", errno.EEXIST:
            "--workdir must be a directory"}.get(e.errno, "fix it and rerun the same command")
    raise WorkdirError(f"cannot {what} {e.filename or path}: {cause}; {hint}") from None


def _write_atomic(path: str, text: str) -> None:
  with _io("write", path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)


def read_jsonl(path: str, required: dict[str, Any]) -> list[dict]:
  """``history.read_history``, with a damaged line as one WorkdirError naming the fix."""
  with _io("read", path):
    try:
      return history.read_history(path, required)
    except ValueError as e:
      raise WorkdirError(f"{e}; the workdir was edited or damaged: restore the file or use a new "
                         "--workdir (nothing was changed)") from None


class Workdir:
  """The workdir of process 0: one search at a time, all its files, resume after any stop."""

  def __init__(self, path: str, record: dict[str, Any], *, space_json: Any = None,
               keep_checkpoints: int = 3, tensorboard: bool = True,
               rows_per_step: Callable[[int], int] | None = None,
               summarize: Callable[[list[dict]], dict] | None = None):
    """``rows_per_step(step)``: the history rows a done step has (default: the config's
    ``search.children_per_step``); ``summarize(rows)``: the summary's ``best`` and any further
    keys (default: ``{"best": history.best_row(rows)}``)."""
    self.path, self.record, self._space_json = path, record, space_json or {}
    self._keep, self._tensorboard = keep_checkpoints, tensorboard
    self._rows_per_step, self._summarize = rows_per_step, summarize
    self._lock = self._manager = self._history = self._steps = self._writer = None
    self._later: list[dict] = []

  def _file(self, name: str) -> str:
    return os.path.join(self.path, name)

  def check(self) -> None:
    """Refuses (reading only) a workdir that belongs to another config, or is not a directory."""
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise WorkdirError(f"--workdir {self.path} is a file, not a directory; give a directory")
    ckpt = self._file("checkpoints")
    if os.path.exists(ckpt) and not os.path.isdir(ckpt):
      raise WorkdirError(f"{ckpt} is a file, not the checkpoints folder; move it away or use a "
                         "new --workdir (nothing was changed)")
    path = self._file("config.json")
    if os.path.exists(path):
      with _io("read", path), open(path) as f:
        try:
          old = json.load(f)
        except ValueError:
          raise WorkdirError(f"{path} does not parse; restore it or use a new --workdir") from None
      if not isinstance(old, dict):
        raise WorkdirError(f"{path} holds a JSON {type(old).__name__}, not a search's config; "
                           "restore it or use a new --workdir")
      diffs = sorted(k for k in set(old) | set(self.record)
                     if k not in RESUMABLE_CHANGES
                     and not (k in DERIVED_KEYS and k not in old)
                     and not (k not in old and k in ADDED_FIELDS
                              and self.record.get(k) == ADDED_FIELDS[k])
                     and old.get(k) != self.record.get(k))
      if diffs:
        shown = "; ".join(f"config.{k}: workdir has {old.get(k)!r}, now {self.record.get(k)!r}"
                          for k in diffs[:3])
        raise WorkdirMismatchError(
            f"workdir {self.path} holds a search with a different config ({shown}"
            f"{'; ...' if len(diffs) > 3 else ''}); use a new --workdir or the same config")
    elif os.path.isdir(self._file("checkpoints")):
      raise WorkdirMismatchError(f"workdir {self.path} has checkpoints but no config.json; "
                                 "use a new --workdir")

  def open(self) -> None:
    """Creates the workdir, takes its lock, and writes config.json (a new workdir)."""
    self.check()
    with _io("create", self.path):
      os.makedirs(self.path, exist_ok=True)
    lock_path = self._file(".lock")
    with _io("lock", lock_path):
      self._lock = take_lock(lock_path, lambda holder: WorkdirError(
          f"workdir {self.path} is in use by another search (pid {holder}); wait for it to end "
          "or use another --workdir"), mark=False)  # marked once restore() accepts the workdir
    self.check()  # again, under the lock: another search may have just written config.json
    if not os.path.exists(self._file("config.json")):
      _write_atomic(self._file("config.json"), json.dumps(self.record, indent=1, sort_keys=True))

  def restore(self, state):
    """Where the search starts: ``(step, searcher state, history rows)``.

    The rows are those of the steps before ``step`` followed by any of later steps (an
    interrupted step, or more after a fall back to an older checkpoint), which the search reuses
    where the tokens match.
    """
    steps_path, history_path = self._file("steps.jsonl"), self._file("history.jsonl")
    step_rows = read_jsonl(steps_path, history.STEP_KEYS)
    rows = read_jsonl(history_path, history.ROW_KEYS)
    seen: set[tuple[int, int]] = set()
    for n, r in enumerate(rows, 1):
      if (r["step"], r["index"]) in seen:
        raise WorkdirError(f"{history_path}, line {n}: a second row of step {r['step']}, child "
                           f"{r['index']} (a line copied by hand?); remove it or use a new "
                           "--workdir (nothing was changed)")
      seen.add((r["step"], r["index"]))
    ckpt_dir = os.path.abspath(self._file("checkpoints"))
    logged = {r["step"] for r in step_rows}
    if not os.path.exists(steps_path) and os.path.isdir(ckpt_dir):
      logging.warning("%s is missing: the metrics of the steps done so far are lost; the search "
                      "goes on from its checkpoint", steps_path)
      logged = None
    options = {}
    if jax.process_count() > 1:  # only process 0 touches the checkpoints
      with _io("create", ckpt_dir):
        os.makedirs(ckpt_dir, exist_ok=True)
      options = {"create": False, "multiprocessing_options": ocp.options.MultiprocessingOptions(
          primary_host=0, active_processes={0})}
    with _io("open the checkpoints in", ckpt_dir):
      self._manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(
          max_to_keep=self._keep, enable_async_checkpointing=False, cleanup_tmp_directories=True,
          **options))
    m = self.record["search.children_per_step"]
    start, state = _restore(self._manager, state, logged, self.path, rows,
                            self._rows_per_step or (lambda step: m))
    with _io("lock", self._file(".lock")):
      mark_lock(self._lock)
    kept = [r for r in rows if r["step"] < start]
    self._later = [r for r in rows if r["step"] >= start]
    _write_atomic(history_path, "".join(_line(r).decode() for r in rows))  # drops a cut line
    _write_atomic(steps_path, "".join(json.dumps(r) + "\n" for r in step_rows
                                      if r["step"] < start))
    with _io("open", history_path):
      self._history = open(history_path, "r+b")  # pylint: disable=consider-using-with
      self._history.seek(sum(len(_line(r)) for r in kept))
      self._steps = open(steps_path, "a")  # pylint: disable=consider-using-with
    self._later.reverse()
    if self._tensorboard:
      with _io("write TensorBoard events in", self.path):
        self._writer = summaries.Writer(self.path, purge_step=start + 1)  # redone steps' points go
        if start == 0:  # the config beside the curves (TensorBoard's text tab)
          self._writer.write_text("config", self.record)
    return start, state, rows

  def write_row(self, row: dict) -> None:
    """Appends a child's row; a row equal to the next one still on disk from an interrupted run
    is kept in place, any other cuts the file there first (so a kill meanwhile loses nothing)."""
    line = _line(row)
    with _io("write", self._history.name):
      if self._later and self._later[-1] == row:
        self._later.pop()
        self._history.seek(len(line), os.SEEK_CUR)
        return
      if self._later:
        self._later = []
        self._history.truncate()
      self._history.write(line)
      self._history.flush()

  def end_step(self, step: int, state, step_row: dict, rows: list[dict], all_rows: list[dict],
               metric: base.Metric, children_per_hour: float | None) -> None:
    """Saves the state after ``step``, the summary, TensorBoard points, then the step's line."""
    t0 = time.time()
    with _io("write", self._history.name):
      os.fsync(self._history.fileno())
    try:
      with _quiet_orbax_errors():
        self._manager.save(step + 1, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_host(state))))
    except Exception as e:  # pylint: disable=broad-except  (orbax wraps OSError in its own types)
      raise WorkdirError(f"cannot save the checkpoint of step {step} in "
                         f"{self._manager.directory}: {_cause(e)}; free some space or fix the "
                         "directory, then rerun the same command to resume") from None
    best = self.write_summary(all_rows, step + 1)
    if self._writer is not None:  # before the steps.jsonl line, which marks the step done
      with _io("write TensorBoard events in", self.path):
        self._writer.write_step(step, summaries.step_scalars(
            step_row, rows, best["reward"] if best else None, children_per_hour, metric))
    save_seconds = time.time() - t0
    step_row = {**step_row, "save_seconds": round(save_seconds, 4),
                "seconds": round(step_row["seconds"] + save_seconds, 4)}
    with _io("write", self._steps.name):
      self._steps.write(json.dumps(step_row) + "\n")
      self._steps.flush()

  def finish(self, rows: list[dict], steps: int) -> None:
    """The search ran to its end: rows of steps past it go, and the summary is final."""
    if self._later:
      with _io("write", self._history.name):
        self._history.truncate()
      self._later = []
    self.write_summary(rows, steps)

  def write_summary(self, rows: list[dict], steps: int) -> dict | None:
    summary = self._summarize(rows) if self._summarize else {"best": history.best_row(rows)}
    _write_atomic(self._file("summary.json"), json.dumps(
        {"best": summary["best"], "num_evaluated": len(rows), "controller_steps": steps,
         "search_space": self._space_json, "metric": self.record.get("metric.name"),
         **{k: v for k, v in summary.items() if k != "best"}}, indent=1))
    return summary["best"]

  def close(self) -> None:
    for f in (self._history, self._steps, self._writer):
      if f is not None:
        with contextlib.suppress(OSError):
          f.close()
    if self._manager is not None:
      self._manager.close()
    if self._lock is not None:
      self._lock.close()  # releases the flock
    self._lock = self._manager = self._history = self._steps = self._writer = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class NoWorkdir(Workdir):
  """The workdir of a process other than 0: it writes nothing (process 0 sends it the start)."""

  def check(self) -> None:
    pass

  def open(self) -> None:
    pass

  def restore(self, state):
    return 0, state, []

  def write_row(self, row: dict) -> None:
    pass

  def end_step(self, *args, **kwargs) -> None:
    pass

  def finish(self, rows, steps) -> None:
    pass

  def write_summary(self, rows, steps):
    return history.best_row(rows)


def _cause(e: BaseException) -> str:
  """The operating system's words in an orbax/tensorstore error, e.g. "File too large"."""
  text = str(e)
  # The code, not the words before it: tensorstore puts other annotations (a JSON spec) between
  # the message and the code in some errors.
  m = re.search(r"\[os_error_code='?(\d+)'?\]", text)
  if m:
    return f"{os.strerror(int(m.group(1)))} (errno {m.group(1)})"
  lines = text.strip().splitlines()
  return lines[-1][:300] if lines else type(e).__name__


class _DropOrbaxErrors(logging_std.Filter):
  def filter(self, record) -> bool:
    return not (record.levelno >= logging_std.ERROR and "/orbax/" in record.pathname)


@contextlib.contextmanager
def _quiet_orbax_errors():
  """Orbax logs a failed save from its threads, with tracebacks, before raising it to us: the
  caller reports it as one line instead."""
  f, logger = _DropOrbaxErrors(), logging_std.getLogger("absl")
  logger.addFilter(f)
  try:
    yield
  finally:
    logger.removeFilter(f)


def _host(state):
  """The state as orbax is given it: with several processes, orbax refuses process-local
  jax.Arrays, so numpy copies; with one, the arrays themselves (restoring into numpy targets makes
  orbax close its event loop under reads still in flight when a checkpoint is corrupt)."""
  return jax.tree.map(np.asarray, state) if jax.process_count() > 1 else state


def _line(row: dict) -> bytes:
  return (json.dumps(row) + "\n").encode()


def take_lock(path: str, busy: Callable[[str], Exception], mark: bool = True):
  """Opens ``path`` and holds an exclusive ``flock`` on it (a second search, or retrain, on the
  same folder is refused): the open file, whose closing releases the lock. Raises ``busy(pid of
  the holder)`` where another process holds it. With ``mark`` this process's pid is written in at
  once; without, by :func:`mark_lock` once the run is past its checks (a refused run leaves the
  file as it was)."""
  lock = open(path, "a+")  # pylint: disable=consider-using-with
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    lock.seek(0)
    holder = lock.read().strip() or "?"
    lock.close()
    raise busy(holder) from None
  if mark:
    mark_lock(lock)
  return lock


def mark_lock(lock) -> None:
  """Writes this process's pid into the held lock file ``lock`` (what a refused second run
  names)."""
  lock.seek(0)
  lock.truncate()
  lock.write(f"{os.getpid()}\n")
  lock.flush()


def move_aside(path: str, folder: str, what: str, error: BaseException, then: str = "") -> str:
  """Moves the unreadable checkpoint ``path`` (of ``what``, e.g. "controller step 3") to
  ``folder/checkpoints_unreadable/NAME`` with a warning naming ``error``; returns where."""
  aside = os.path.join(folder, "checkpoints_unreadable", os.path.basename(os.path.normpath(path)))
  logging.warning("checkpoint of %s is unreadable (%s); moved to %s%s", what,
                  f"{type(error).__name__}: {error}".splitlines()[0][:300], aside,
                  f",{then}" if then else "")
  shutil.rmtree(aside, ignore_errors=True)
  os.makedirs(os.path.dirname(aside), exist_ok=True)
  shutil.move(path, aside)
  return aside


def _restore(manager, state, logged: set[int] | None, workdir: str, rows: list[dict],
             rows_per_step: Callable[[int], int]):
  """The newest checkpoint that restores, whose step is logged in steps.jsonl and whose steps
  have all their rows in the history: ``(step, state)``.

  A checkpoint that raises on restore (corrupt, truncated or missing files) is moved to
  ``workdir/checkpoints_unreadable/`` with a warning, and the next older one is tried; one whose
  step has no line in steps.jsonl (killed between the save and that line) is deleted and redone.
  With none left the controller starts from scratch. Either way the caller reuses the history rows
  of the steps after the restored one, so no child is trained again. A history that lacks rows of
  the restored steps (deleted or cut by hand) is refused before anything is changed.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  done = max((s for s in steps if logged is None or s - 1 in logged), default=0)
  have = {(r["step"], r["index"]) for r in rows}
  missing = [(s, k) for s in range(done) for k in range(rows_per_step(s)) if (s, k) not in have]
  if missing:
    raise WorkdirError(
        f"{os.path.join(workdir, 'history.jsonl')} lacks {len(missing)} rows of the controller "
        f"steps that the checkpoint of step {done} says are done (the first: step "
        f"{missing[0][0]}, child {missing[0][1]}); the file was deleted or cut: restore it or "
        "use a new --workdir (nothing was changed)")
  dropped = []
  for step in steps:
    path = os.path.join(os.fspath(manager.directory), str(step))
    if logged is not None and step - 1 not in logged:
      logging.warning("checkpoint of controller step %d is newer than steps.jsonl (killed right "
                      "after saving it?); deleting it and redoing that step from the history",
                      step)
      shutil.rmtree(path, ignore_errors=True)
    else:
      try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_host(state))))
      except Exception as e:  # pylint: disable=broad-except
        move_aside(path, workdir, f"controller step {step}", e, " trying the one before")
      else:
        if dropped:
          logging.warning("restored the checkpoint of controller step %d instead of step %d; "
                          "steps from %d on reuse their rows in history.jsonl", step, dropped[0],
                          step)
          manager.reload()
        logging.info("resumed from checkpoint at controller step %d", step)
        return step, jax.tree.map(jax.numpy.asarray, restored.state)
    dropped.append(step)
  if dropped:
    logging.warning("no usable checkpoint (of controller steps %s); the controller starts from "
                    "scratch at step 0 and reuses the history rows", sorted(dropped))
    manager.reload()
  return 0, state


def open_workdir(path: str, record: dict[str, Any], search_cfg, primary: bool,
                 space: base.SearchSpace, **kwargs) -> Workdir:
  """The workdir of this process: :class:`Workdir` on process 0, :class:`NoWorkdir` elsewhere
  (``kwargs``: :class:`Workdir`'s ``rows_per_step`` and ``summarize``)."""
  cls = Workdir if primary else NoWorkdir
  return cls(path, record, space_json=base.to_json(space) if dataclasses.is_dataclass(space)
             else {}, keep_checkpoints=search_cfg.keep_checkpoints,
             tensorboard=search_cfg.tensorboard, **kwargs)


