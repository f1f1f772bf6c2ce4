"""The exact search loop: propose -> decode -> evaluate -> feedback -> record.

One controller step samples m architectures, evaluates each child (an evaluator, e.g. training it
on the data), and feeds the rewards back to the searcher. What a run writes and how it resumes is
:mod:`nas_jax.core.workdir`'s; how several processes share a step's children is
:mod:`nas_jax.core.distributed`'s; the row, Ctrl-C and the progress line are
:mod:`nas_jax.core.loop`'s. Randomness comes from one root key split into named streams, with
per-step keys from ``fold_in``, so a run stopped at any moment and restarted writes the same
history as an uninterrupted one; children already evaluated are taken from the history.

The parts (space, searcher, evaluator) come built from :mod:`nas_jax.experiment`, whose
``run_search`` is the entry point.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import logging

from nas_jax.core import distributed, history, loop, workdir as workdir_lib
from nas_jax.spaces import base
from nas_jax.training import data as data_lib


def run(config, workdir: str, *, space, searcher, evaluator, dataset=None,
        progress: bool = True) -> loop.SearchResult:
  """Runs (or resumes) the exact search of ``config`` (parsed: ``nas_jax.config.parse``).

  ``evaluator``: ``(space, archs, dataset, keys) -> iterable of ChildResult`` in order, with an
  optional ``metric``; ``dataset`` defaults to ``config.data``'s. Under ``jax.distributed`` every
  process runs this with the same config: the children of each step are shared out, all
  processes apply the same update, and only process 0 writes ``workdir``.
  """
  cluster = distributed.current()
  try:
    return _run(config, workdir, cluster, space, searcher, evaluator, dataset, progress)
  except BaseException as e:  # the other processes stop too, instead of waiting for this one
    why = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
    cluster.abort(f"process {cluster.index} stopped: {why}")
    raise


def _run(config, workdir, cluster, space, searcher, evaluator, dataset, show):
  metric = getattr(evaluator, "metric", base.ACCURACY)
  record = workdir_lib.config_record(config, space, metric)
  wd = workdir_lib.open_workdir(workdir, record, config.search, cluster.is_primary, space)
  wd.check()  # a workdir of another config is refused before the data is loaded
  if dataset is None:
    dataset = data_lib.load(config.data, config.seed)
  root = jax.random.key(config.seed)
  init_key, propose_key, child_key = (jax.random.fold_in(root, i) for i in range(3))
  m, num_steps = config.search.children_per_step, config.search.num_steps
  with wd, loop.Interrupt() as interrupt:
    wd.open()  # only now, with config and data known good, is the workdir written
    start, state, rows = wd.restore(searcher.init(init_key, space.decisions))
    start, state, rows = cluster.share_start(start, state, rows, workdir_lib.run_digest(record),
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
    progress = loop.Progress(num_steps, m, lambda s: space.num_layers(s * m), show)
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
      with interrupt.writing():
        wd.end_step(step, state, step_row, step_rows, kept, metric, rate * 60 if rate else None)
      loop.stop_if_all_raised(kept)
      loop.stop_if_most_raised(step_rows)
      interrupt.check()
      progress.log(step, num_layers, rewards, metrics, info, history.best_row(kept), step_row,
                   gated=any(s.gate >= 0 for s in plan))  # the children's depths are chosen
    wd.finish(kept, max(start, num_steps))
  return loop.SearchResult(history.best_row(kept), len(kept), workdir, metric)


def _row(step, k, num_layers, tokens, arch, space, res) -> dict:
  """The history row of child k of ``step`` from its evaluator's ChildResult ``res``."""
  if res.failed:
    logging.warning("child %d.%d failed: %s", step, k, res.error.splitlines()[0])
  return loop.child_row(step, k, num_layers, tokens, arch, space, reward=res.reward,
                        metrics=res.metrics, param_count=res.param_count,
                        seconds=round(res.seconds, 3), failed=res.failed, error=res.error)
