"""What the exact search (:mod:`nas_jax.core.search`) and the weight-sharing search
(:mod:`nas_jax.core.shared_search`) share: the result, the history row, Ctrl-C at a safe point,
the progress line and the guard that stops a search whose children all raise.

Neither loop imports the other; both import this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from typing import Any, Callable

import numpy as np
from absl import logging

from nas_jax import errors, runtime
from nas_jax.spaces import base


@dataclasses.dataclass
class SearchResult:
  best: dict[str, Any] | None
  num_evaluated: int
  workdir: str
  metric: base.Metric = base.ACCURACY


def child_row(step: int, index: int, num_layers: int, tokens, arch, space, *, reward: float,
              metrics: dict, param_count: int, seconds: float, failed: bool, error: str,
              **extra) -> dict:
  """One history row: which child (step, index, tokens, architecture), its reward, the metrics of
  its evaluator, its size and wall seconds, whether it failed and why; ``extra`` after those."""
  return {"step": step, "index": index, "num_layers": num_layers, "tokens": tokens.tolist(),
          "arch": base.to_json(arch), "description": space.describe(arch), "reward": reward,
          **metrics, "param_count": param_count, "seconds": seconds, "failed": failed,
          "error": error, **extra}


def stop_if_all_raised(rows: list[dict]) -> None:
  """Raises ChildrenFailError when every child so far raised (:func:`nas_jax.errors.raised`): the
  space or the data is broken. Children that diverged are results (reward 0), not errors."""
  if rows and all(errors.raised(r) for r in rows):
    raise errors.ChildrenFailError(
        f"every child so far failed; the first error:\n{rows[0]['error']}")


def stop_if_most_raised(step_rows: list[dict]) -> None:
  """Raises ChildrenFailError when most of a step's children raised the same exception type (a
  bug that keeps REINFORCE learning from reward-0 children, e.g. a stochastic layer without its
  key); fewer, or a mix, are recorded as failed and the search goes on."""
  raised = [r for r in step_rows if errors.raised(r)]
  if not raised:
    return
  types = [errors.error_type(r["error"]) for r in raised]
  common = max(set(types), key=types.count)
  count = types.count(common)
  if 2 * count > len(step_rows):
    first = next(r for r, t in zip(raised, types) if t == common)
    raise errors.ChildrenFailError(
        f"{count} of the {len(step_rows)} children of step {first['step']} raised "
        f"{common or 'an error'}; the space, its children or the data is broken (a child whose "
        f"loss diverges is not an error). The first:\n{first['error']}")


class Interrupt:
  """Ctrl-C stops the search at the next safe point (a child recorded, a step saved); a second
  Ctrl-C stops it at once. (A KeyboardInterrupt raised at an arbitrary point can land in a
  garbage-collection callback, where Python ignores it.)"""

  def __init__(self, until: str = "the child in training is recorded"):
    self.until = until

  def __enter__(self):
    self.requested, self._previous, self._writing = False, None, 0
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    if self.requested and not self._writing:
      raise KeyboardInterrupt
    if not self.requested:
      logging.warning("interrupted: stopping once %s (Ctrl-C again to stop at once)", self.until)
    self.requested = True

  @contextlib.contextmanager
  def writing(self):
    """A checkpoint or row being written: a second Ctrl-C waits for its end (the next
    :meth:`check`), as a half-written checkpoint would leave orbax's threads reporting it."""
    self._writing += 1
    try:
      yield
    finally:
      self._writing -= 1

  def check(self) -> None:
    if self.requested:
      raise KeyboardInterrupt

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)


def fmt(v) -> str:
  """A progress line's number: 4 decimals, or "-" for none."""
  return "-" if v is None else f"{v:.4f}"


def duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "-"
  minutes, secs = divmod(int(round(seconds)), 60)
  return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
  """The log line of each step: rewards, the controller, speed, elapsed time and time left.

  Steps are numbered from 0, as in the workdir's files (``step 8 (9 of 16)``: history rows and
  ``summary.json`` say step 8). Time left is estimated per depth: the measured seconds per child
  at each depth the schedule has reached (compilation included), deeper children not yet seen
  scaled by their depth from the deepest one seen, plus the last step's controller time.
  The line is logged at INFO and, with ``show`` where logging would not show it, printed to stderr
  (:func:`nas_jax.runtime.log_progress`).
  """

  def __init__(self, num_steps: int, m: int, depth_of: Callable[[int], int], show: bool = True):
    self.num_steps, self.m, self.depth_of, self.show = num_steps, m, depth_of, show
    self.t0, self.done = time.time(), 0
    self.per_depth: dict[int, list[float]] = {}   # depth -> [children seconds, children]
    self.t_controller = 0.0

  def add(self, children: int) -> float:
    """Counts a step's newly evaluated children; returns children per minute so far."""
    self.done += children
    elapsed = time.time() - self.t0
    return self.done / elapsed * 60 if elapsed > 0 and self.done else 0.0

  def child_seconds(self, depth: int) -> float:
    if depth in self.per_depth:
      seconds, n = self.per_depth[depth]
      return seconds / n
    seen = max(self.per_depth, key=lambda d: (d <= depth, d if d <= depth else -d))
    return self.child_seconds(seen) * depth / max(seen, 1)

  def eta(self, step: int) -> float:
    if not self.per_depth:
      return float("nan")
    return sum(self.m * self.child_seconds(self.depth_of(s)) + self.t_controller
               for s in range(step + 1, self.num_steps))

  def log(self, step, num_layers, rewards, metrics, info, best, step_row, gated=False):
    """``gated``: the space's decisions choose each child's depth, up to ``num_layers``."""
    if step_row["children"]:
      totals = self.per_depth.setdefault(num_layers, [0.0, 0])
      totals[0] += step_row["children_seconds"]
      totals[1] += step_row["children"]
    self.t_controller = step_row["controller_seconds"]
    elapsed = time.time() - self.t0
    rate = self.done / max(elapsed, 1e-9) * 60 if self.done else 0.0
    line = ("step %d (%d of %d) | layers %s | reward mean %.4f max %.4f | baseline %s -> %s | "
            "entropy %.2f | loss %s | best %.4f | %.1f children/min | controller %.0f ms | "
            "elapsed %s | eta %s")
    args = (step, step + 1, self.num_steps,
            f"up to {num_layers} (gated)" if gated else num_layers, rewards.mean(), rewards.max(),
            fmt(metrics.get("baseline")), fmt(metrics.get("new_baseline")), info["entropy"],
            fmt(metrics.get("loss")), best["reward"] if best else 0.0, rate,
            step_row["controller_seconds"] * 1e3, duration(elapsed), duration(self.eta(step)))
    runtime.log_progress(self.show, line, *args)

