"""The search loop: propose -> decode -> evaluate -> feedback -> record.

One controller step samples m architectures, evaluates each child (the space's evaluator, e.g.
training it on the data), and feeds the rewards back to the searcher. What a run writes and how it
resumes is :mod:`nas_jax.core.workdir`'s; how several processes share a step's children is
:mod:`nas_jax.core.distributed`'s. Randomness comes from one root key split into named streams,
with per-step keys from ``fold_in``, so a run stopped at any moment and restarted writes the same
history as an uninterrupted one; children already evaluated are taken from the history.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from typing import Any, Callable, Iterable

import jax
import numpy as np
from absl import logging

from nas_jax import config as config_lib, runtime
from nas_jax.core import distributed, searchers, workdir as workdir_lib
from nas_jax.core.workdir import WorkdirError, WorkdirMismatchError  # noqa: F401  (public)
from nas_jax.spaces import base
from nas_jax.tools import analysis
from nas_jax.training import data as data_lib, trainer


class ChildrenFailError(RuntimeError):
  """Every child raised an exception: the search space or the data is broken."""


@dataclasses.dataclass
class SearchResult:
  best: dict[str, Any] | None
  num_evaluated: int
  workdir: str
  metric: base.Metric = base.ACCURACY


def run_search(cfg, workdir: str, *, space: base.SearchSpace | None = None, dataset=None,
               evaluate_fn: Callable[..., trainer.ChildResult] | None = None,
               evaluate_batch_fn: Callable[..., Iterable[trainer.ChildResult]] | None = None,
               progress: bool = True) -> SearchResult:
  """Runs (or resumes) a search in ``workdir``.

  Args:
    cfg: a config from ``nas_jax.config.default_config()`` or an experiment file
      (``nas_jax.configs.custom`` for a space of your own: it has no space section).
    workdir: output directory; a previous run of the same config there is resumed.
    space: a search space object; defaults to the one ``cfg.search_space`` names (required
      where that section is empty, ``search_space.name=""``).
    dataset: the data; defaults to ``cfg.data`` (``nas_jax.training.data.load``).
    evaluate_fn: ``(space, arch, dataset, key) -> ChildResult``; replaces the space's evaluator
      (e.g. a fake reward to test searchers).
    evaluate_batch_fn: ``(space, archs, dataset, keys) -> iterable of ChildResult`` in order;
      replaces the space's evaluator (``space.evaluator(cfg)``), which trains a step's children.
    progress: one line per controller step (reward, baseline, children/min, elapsed, time left).
      It is always logged at INFO (absl); where no logging set-up would show that (a notebook or
      a script: :func:`nas_jax.runtime.progress_is_logged`), it is also written to stderr unless
      ``progress=False``.

  Under ``jax.distributed`` every process runs this with the same config: the children of each
  step are shared out, all processes apply the same update, and only process 0 writes ``workdir``.

  With ``cfg.shared.enabled`` the search is the weight-sharing one of
  :mod:`nas_jax.core.shared_search` (one process; ``evaluate_fn``/``evaluate_batch_fn`` unused).

  Returns:
    A :class:`SearchResult` with the best history row.
  """
  from nas_jax.core import shared_search  # pylint: disable=import-outside-toplevel  (imports us)
  if shared_search.enabled(cfg):
    if evaluate_fn is not None or evaluate_batch_fn is not None:
      raise ValueError("evaluate_fn/evaluate_batch_fn replace the children's training; a "
                       "weight-sharing search (config.shared.enabled) has none to replace")
    return shared_search.run(cfg, workdir, space=space, dataset=dataset, progress=progress)
  cluster = distributed.current()
  try:
    return _run(cfg, workdir, cluster, space, dataset, evaluate_fn, evaluate_batch_fn, progress)
  except BaseException as e:  # the other processes stop too, instead of waiting for this one
    why = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
    cluster.abort(f"process {cluster.index} stopped: {why}")
    raise


def _run(cfg, workdir, cluster, space, dataset, evaluate_fn, evaluate_batch_fn, show):
  config = config_lib.parse(cfg, space)   # checks the space searched against the config
  space = config.search_space
  searcher = searchers.make_searcher(config.search.searcher, config.controller)
  evaluator = _evaluator(config, space, evaluate_fn, evaluate_batch_fn)
  metric = getattr(evaluator, "metric", base.ACCURACY)
  record = workdir_lib.config_record(config, space, metric)
  wd = workdir_lib.open_workdir(workdir, record, config.search, cluster.is_primary, space)
  wd.check()  # a workdir of another config is refused before the data is loaded
  if dataset is None:
    dataset = data_lib.load(config.data, config.seed)
  root = jax.random.key(config.seed)
  init_key, propose_key, child_key = (jax.random.fold_in(root, i) for i in range(3))
  m, num_steps = config.search.children_per_step, config.search.num_steps
  with wd, _Interrupt() as interrupt:
    wd.open()  # only now, with config and data known good, is the workdir written
    start, state, rows = wd.restore(searcher.init(init_key, space.decisions))
    start, state, rows = cluster.share_start(start, state, rows, config_lib.run_digest(record),
                                             config.search.gather_timeout_s)
    kept = [r for r in rows if r["step"] < start]
    reusable = {(r["step"], r["index"]): r for r in rows if r["step"] >= start}
    if kept and all(r["failed"] for r in kept):
      logging.warning(
          "resuming %s: all %d children it holds failed (the first: %s); they stay in its "
          "history and the controller has learnt from their reward 0. If you fixed the code, "
          "start afresh with a new --workdir", workdir, len(kept),
          (kept[0].get("error") or "no error text").splitlines()[0])
    evaluate = cluster.shared(evaluator, config.search.gather_timeout_s)
    progress = _Progress(num_steps, m, lambda s: space.num_layers(s * m), show)
    for step in range(start, num_steps):
      t_step = time.time()
      num_layers = space.num_layers(step * m)
      plan = space.plan(num_layers)
      tokens, info = searcher.propose(state, jax.random.fold_in(propose_key, step), plan,
                                      space.decisions, m)
      t_controller = time.time() - t_step
      archs = [space.decode(plan, t) for t in tokens]
      old = [reusable.pop((step, k), None) for k in range(m)]
      step_rows = [r if r is not None and r["tokens"] == tokens[k].tolist() else None
                   for k, r in enumerate(old)]
      todo = [k for k in range(m) if step_rows[k] is None]
      t_children = time.time()
      results = iter(evaluate(step, todo, space, [archs[k] for k in todo], dataset,
                              [jax.random.fold_in(child_key, step * m + k) for k in todo]))
      for k in range(m):  # each child is recorded as soon as it is evaluated
        if step_rows[k] is None:
          step_rows[k] = _row(step, k, num_layers, tokens[k], archs[k], space, next(results))
        wd.write_row(step_rows[k])
        interrupt.check()
      kept += step_rows
      t_children = time.time() - t_children
      t0 = time.time()
      rewards = np.array([r["reward"] for r in step_rows], np.float32)
      state, metrics = searcher.feedback(state, tokens, rewards, plan, space.decisions)
      metrics = {k: float(v) for k, v in metrics.items()}
      t_controller += time.time() - t0
      rate = progress.add(len(todo))
      step_row = {
          "step": step, "num_layers": num_layers, "children": len(todo),
          "reward_mean": float(rewards.mean()), "reward_max": float(rewards.max()),
          "entropy": float(info["entropy"]), **metrics,
          "controller_seconds": round(t_controller, 4), "children_seconds": round(t_children, 4),
          "seconds": round(time.time() - t_step, 4)}
      wd.end_step(step, state, step_row, step_rows, kept, metric, rate * 60 if rate else None)
      _stop_if_all_raised(kept)
      interrupt.check()
      progress.log(step, num_layers, rewards, metrics, info, analysis.best_row(kept), step_row)
    wd.finish(kept, max(start, num_steps))
  return SearchResult(analysis.best_row(kept), len(kept), workdir, metric)


def _evaluator(config, space, evaluate_fn, evaluate_batch_fn):
  """The space's evaluator, unless the caller gives its own (``evaluate_fn``: one child)."""
  if evaluate_fn is not None:
    return lambda space, archs, dataset, keys: (
        evaluate_fn(space, a, dataset, k) for a, k in zip(archs, keys))
  return evaluate_batch_fn or space.evaluator(config)


def _row(step, k, num_layers, tokens, arch, space, res: trainer.ChildResult) -> dict:
  if res.failed:
    logging.warning("child %d.%d failed: %s", step, k, res.error.splitlines()[0])
  return {"step": step, "index": k, "num_layers": num_layers, "tokens": tokens.tolist(),
          "arch": base.to_json(arch), "description": space.describe(arch), "reward": res.reward,
          **res.metrics, "param_count": res.param_count, "seconds": round(res.seconds, 3),
          "failed": res.failed, "error": res.error}


def _raised(row) -> bool:
  """Did this child raise (a bug in the space or the data), rather than diverge?"""
  e = row["error"]
  return bool(row["failed"] and e and not e.startswith("FloatingPointError")
              and "not finite" not in e)


def _stop_if_all_raised(rows) -> None:
  if rows and all(_raised(r) for r in rows):
    raise ChildrenFailError(f"every child so far failed; the first error:\n{rows[0]['error']}")


class _Interrupt:
  """Ctrl-C stops the search at the next safe point (a child recorded, a step saved); a second
  Ctrl-C stops it at once. (A KeyboardInterrupt raised at an arbitrary point can land in a
  garbage-collection callback, where Python ignores it.)"""

  def __enter__(self):
    self.requested, self._previous = False, None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    if self.requested:
      raise KeyboardInterrupt
    self.requested = True
    logging.warning("interrupted: stopping once the child in training is recorded (Ctrl-C again "
                    "to stop at once)")

  def check(self) -> None:
    if self.requested:
      raise KeyboardInterrupt

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)


class _Progress:
  """The log line of each step: rewards, the controller, speed, elapsed time and time left.

  Steps are numbered from 0, as in the workdir's files (``step 8 (9 of 16)``: history rows and
  ``summary.json`` say step 8). Time left is estimated per depth: the measured seconds per child
  at each depth the schedule has reached (compilation included), deeper children not yet seen
  scaled by their depth from the deepest one seen, plus the last step's controller time.
  The line is logged at INFO and, with ``show`` where logging would not show it, printed to stderr.
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

  def log(self, step, num_layers, rewards, metrics, info, best, step_row):
    if step_row["children"]:
      totals = self.per_depth.setdefault(num_layers, [0.0, 0])
      totals[0] += step_row["children_seconds"]
      totals[1] += step_row["children"]
    self.t_controller = step_row["controller_seconds"]
    elapsed = time.time() - self.t0
    rate = self.done / max(elapsed, 1e-9) * 60 if self.done else 0.0
    fmt = lambda v: "-" if v is None else f"{v:.4f}"
    line = ("step %d (%d of %d) | layers %d | reward mean %.4f max %.4f | baseline %s -> %s | "
            "entropy %.2f | loss %s | best %.4f | %.1f children/min | controller %.0f ms | "
            "elapsed %s | eta %s")
    args = (step, step + 1, self.num_steps, num_layers, rewards.mean(), rewards.max(),
            fmt(metrics.get("baseline")), fmt(metrics.get("new_baseline")), info["entropy"],
            fmt(metrics.get("loss")), best["reward"] if best else 0.0, rate,
            step_row["controller_seconds"] * 1e3, _duration(elapsed), _duration(self.eta(step)))
    runtime.log_progress(self.show, line, *args)


def _duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "-"
  minutes, secs = divmod(int(round(seconds)), 60)
  return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"