"""The search loop: propose -> decode -> train children -> feedback, with history and resume.

One controller step samples m architectures, trains each child, and feeds the rewards back to the
searcher. Everything a run produces lives in its workdir:

* ``config.json``: the config the workdir belongs to (a different one is refused);
* ``history.jsonl``: one line per evaluated architecture (written as soon as it is evaluated);
* ``steps.jsonl``: one line per controller step: reward mean/max, the controller's loss, entropy
  and baseline, and where the step's wall time went (``controller_seconds`` for sampling and the
  update, ``children_seconds``, ``save_seconds``, ``seconds`` in all);
* ``checkpoints/``: orbax checkpoints of the searcher state after each controller step (a
  corrupt one is moved to ``checkpoints_unreadable/`` on resume, and the one before is used);
* ``summary.json``: the best architecture so far and its reward;
* ``tensorboard/``: TensorBoard scalars per controller step (``nas_jax.summaries``;
  ``config.search.tensorboard``).

Randomness comes from one root key split into named streams, with per-step keys from
``fold_in``, so a run killed at any moment and restarted continues from its last checkpoint and
writes the same history as an uninterrupted run (same architectures, same rewards). Children of the
interrupted step that were already evaluated are taken from the history instead of retrained; so
are those of all later steps when the resume has to fall back to an older checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Any, Callable, Iterable

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from nas_jax import (analysis, child, config as config_lib, data as data_lib, distributed,
                     executors, searchers, summaries)
from nas_jax.search_spaces import base


class WorkdirMismatchError(RuntimeError):
  """The workdir holds a run with a different config."""


class ChildrenFailError(RuntimeError):
  """Every child raised an exception: the search space or the data is broken."""


@dataclasses.dataclass
class SearchResult:
  best: dict[str, Any] | None
  num_evaluated: int
  workdir: str


def _write_atomic(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _check_workdir_config(workdir: str, cfg_json: dict) -> None:
  """Refuses a workdir that belongs to another config (reads only)."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    diffs = sorted(k for k in set(old) | set(cfg_json)
                   if k not in config_lib.RESUMABLE_CHANGES and old.get(k) != cfg_json.get(k))
    if diffs:
      shown = "; ".join(f"config.{k}: workdir has {old.get(k)!r}, now {cfg_json.get(k)!r}"
                        for k in diffs[:3])
      raise WorkdirMismatchError(
          f"workdir {workdir} holds a search with a different config ({shown}"
          f"{'; ...' if len(diffs) > 3 else ''}); use a new --workdir or the same config")
  elif os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise WorkdirMismatchError(f"workdir {workdir} has checkpoints but no config.json; "
                               "use a new --workdir")




def run_search(cfg, workdir: str, *, space: base.SearchSpace | None = None,
               dataset: data_lib.Dataset | None = None,
               evaluate_fn: Callable[..., child.ChildResult] | None = None,
               evaluate_batch_fn: Callable[..., Iterable[child.ChildResult]] | None = None
               ) -> SearchResult:
  """Runs (or resumes) a search in ``workdir``.

  Args:
    cfg: a config from ``nas_jax.config.default_config()`` or an experiment file.
    workdir: output directory; a previous run of the same config there is resumed.
    space: a search space object; defaults to the one ``cfg.search_space`` names.
    dataset: the data; defaults to ``cfg.data``.
    evaluate_fn: ``(space, arch, dataset, key) -> ChildResult``; replaces the default child
      training (e.g. a fake reward to test searchers).
    evaluate_batch_fn: ``(space, archs, dataset, keys) -> iterable of ChildResult`` in order, for
      executors that train the children of a step together; defaults to the executor that
      ``cfg`` names (one child at a time for CNNs, vmapped language models for cells).

  Under ``jax.distributed`` (several processes, :mod:`nas_jax.distributed`) every process runs
  this with the same config: the children of each step are shared out, all processes apply the
  same controller update, and only process 0 writes ``workdir``. An error in one process stops
  all of them.

  Returns:
    A :class:`SearchResult` with the best history row.
  """
  cluster = distributed.current()
  try:
    return _run_search(cfg, workdir, cluster, space, dataset, evaluate_fn, evaluate_batch_fn)
  except BaseException as e:
    if cluster.count > 1:  # the other processes stop too, instead of waiting for this one
      cluster.abort(f"process {cluster.index} stopped: {type(e).__name__}: {e}")
    raise


def _run_search(cfg, workdir, cluster, space, dataset, evaluate_fn, evaluate_batch_fn):
  config_lib.validate(cfg)
  primary = cluster.is_primary
  space = space or config_lib.search_space(cfg)
  searcher = searchers.make_searcher(cfg.search.searcher, config_lib.reinforce_config(cfg))
  cfg_json = json.loads(json.dumps(config_lib.flatten(cfg)))  # tuples -> lists, as on disk
  cfg_json["search_space.class"] = type(space).__name__
  if primary:
    _check_workdir_config(workdir, cfg_json)
  if dataset is None:
    try:
      dataset = executors.load_data(cfg)
    except ValueError as e:  # e.g. a validation split larger than the dataset
      raise config_lib.ConfigError(str(e)) from None
  # Only now, with config and data known good, does the workdir get written.
  if primary:
    os.makedirs(workdir, exist_ok=True)
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
      _write_atomic(config_path, json.dumps(cfg_json, indent=1, sort_keys=True))
  if evaluate_fn is not None:
    evaluate_batch_fn = lambda space, archs, dataset, keys: (
        evaluate_fn(space, a, dataset, k) for a, k in zip(archs, keys))
  if evaluate_batch_fn is None:
    evaluate_batch_fn = executors.make_evaluator(cfg)

  root = jax.random.key(cfg.seed)
  init_key, propose_key, child_key = (jax.random.fold_in(root, i) for i in range(3))
  decisions = space.decisions
  m = cfg.search.children_per_step
  timeout_s = float(cfg.search.gather_timeout_s)

  # Restore the searcher state, or start a new one (process 0; it sends the state to the others).
  state = searcher.init(init_key, decisions)
  # With several processes orbax refuses process-local jax.Arrays: process 0 saves numpy copies.
  host = (lambda t: jax.tree.map(np.asarray, t)) if cluster.count > 1 else (lambda t: t)
  manager = history = steps_log = tensorboard = None
  start, kept, pending = 0, [], {}
  try:  # on an error before the loop, close what was opened
    if primary:
      options = {}
      ckpt_dir = os.path.abspath(os.path.join(workdir, "checkpoints"))
      if cluster.count > 1:  # only process 0 touches the checkpoints
        os.makedirs(ckpt_dir, exist_ok=True)
        options = {"create": False, "multiprocessing_options": ocp.options.MultiprocessingOptions(
            primary_host=0, active_processes={0})}
      manager = ocp.CheckpointManager(
          ckpt_dir,
          options=ocp.CheckpointManagerOptions(max_to_keep=cfg.search.keep_checkpoints,
                                               enable_async_checkpointing=False,
                                               cleanup_tmp_directories=True, **options))
      # A checkpoint is only taken if its step's line in steps.jsonl was written too (the line
      # follows the save); workdirs of versions without steps.jsonl are not checked.
      steps_path = os.path.join(workdir, "steps.jsonl")
      step_rows = analysis.read_history(steps_path)
      logged = {r["step"] for r in step_rows} if os.path.exists(steps_path) else None
      start, state = _restore(manager, state, host, logged, workdir)
      if cluster.count > 1:
        state = jax.tree.map(jnp.asarray, state)

      # History: rows of finished steps are kept; rows of later steps (the interrupted one, or more
      # after a fall back to an older checkpoint) are reused where the tokens match, and stay on
      # disk until a row that differs is written in their place (a kill meanwhile loses nothing).
      history_path = os.path.join(workdir, "history.jsonl")
      rows = analysis.read_history(history_path)
      kept = [r for r in rows if r["step"] < start]
      later = [r for r in rows if r["step"] >= start]
      pending = {(r["step"], r["index"]): r for r in later}
      _write_atomic(history_path, "".join(json.dumps(r) + "\n" for r in kept + later))
      history = _HistoryFile(history_path, kept, later)
      # Per controller step: where the time went and the controller's metrics (steps.jsonl).
      step_rows = [r for r in step_rows if r["step"] < start]
      _write_atomic(steps_path, "".join(json.dumps(r) + "\n" for r in step_rows))
      steps_log = open(steps_path, "a")  # pylint: disable=consider-using-with
      if cfg.search.tensorboard:
        tensorboard = summaries.Writer(workdir, purge_step=start + 1)  # points of redone steps go
    raised = _RaisedChildren(kept)
    if cluster.count > 1:
      if m < cluster.count:
        logging.warning("%d processes but %d children per step: %d processes stay idle; use a "
                        "multiple of the process count", cluster.count, m, cluster.count - m)
      per_host = ("data.data_dir", "child.num_devices", "search.verbose", "search.keep_checkpoints",
                  "search.gather_timeout_s", "search.tensorboard")  # may differ between hosts
      digest = hashlib.sha256(json.dumps({k: v for k, v in cfg_json.items() if k not in per_host},
                                         sort_keys=True).encode()).hexdigest()
      start, state, pending, raised = _share_start(cluster, start, state, pending, raised, digest,
                                                   timeout_s)
  except BaseException:
    _close(history, steps_log, manager, tensorboard)
    raise

  num_steps = cfg.search.num_steps
  t_start, done_here = time.time(), 0
  try:
    for step in range(start, num_steps):
      t_step = time.time()
      num_layers = space.num_layers(step * m)
      plan = space.plan(num_layers)
      t0 = time.time()
      tokens, info = searcher.propose(state, jax.random.fold_in(propose_key, step), plan,
                                      decisions, m)
      t_controller = time.time() - t0
      rewards = np.zeros(m, np.float32)
      archs = [space.decode(plan, t) for t in tokens]
      rows: list[dict | None] = [None] * m
      for k in range(m):  # children evaluated before a kill (same step, index and tokens)
        old = pending.pop((step, k), None)
        rows[k] = old if old is not None and old["tokens"] == tokens[k].tolist() else None
      todo = [k for k in range(m) if rows[k] is None]
      mine = cluster.mine(todo)
      t_children = time.time()
      results = iter(evaluate_batch_fn(space, [archs[k] for k in mine], dataset,
                                       [jax.random.fold_in(child_key, step * m + k) for k in mine]))

      def new_row(k, res):
        row = {"step": step, "index": k, "num_layers": num_layers, "tokens": tokens[k].tolist(),
               "arch": base.to_json(archs[k]), "description": space.describe(archs[k]),
               "reward": res.reward, "val_accuracy": res.val_accuracy,
               "val_accuracies": list(res.val_accuracies), **(res.metrics or {}),
               "param_count": res.param_count, "seconds": round(res.seconds, 3),
               "failed": res.failed, "error": res.error}
        if res.failed:
          logging.warning("child %d.%d failed: %s", step, k, res.error.splitlines()[0])
        return row

      if cluster.count > 1:  # train my share, publish it, then read the others' rows
        for k in mine:
          rows[k] = new_row(k, next(results))
          cluster.publish(f"{step}/{k}", json.dumps(rows[k]).encode())
        for k in todo:
          if rows[k] is None:
            rows[k] = json.loads(cluster.fetch(f"{step}/{k}", timeout_s))
            if rows[k]["tokens"] != tokens[k].tolist():
              raise distributed.DistributedError(
                  f"child {step}.{k} of another process has other tokens than this process "
                  "sampled: the processes' controllers differ (same config and seed everywhere?)")
      done_here += len(todo)
      for k in range(m):
        if rows[k] is None:  # one process: record each child as soon as it is trained
          rows[k] = new_row(k, next(results))
        if primary:
          history.write(rows[k])
        kept.append(rows[k])
        rewards[k] = rows[k]["reward"]
      if primary:
        history.sync()
      raised.add(rows)
      t0 = time.time()
      t_children = t0 - t_children
      state, metrics = searcher.feedback(state, tokens, rewards, plan, decisions)
      metrics = {k: float(v) for k, v in metrics.items()}
      t_controller += time.time() - t0
      t0 = time.time()
      elapsed = t0 - t_start
      rate = done_here / elapsed * 60 if elapsed > 0 else 0.0
      if primary:
        manager.save(step + 1, args=ocp.args.Composite(state=ocp.args.StandardSave(host(state))))
        best = _write_summary(workdir, kept, step + 1, space)
        step_row = {
            "step": step, "num_layers": num_layers, "children": len(todo),
            "reward_mean": float(rewards.mean()), "reward_max": float(rewards.max()),
            "entropy": float(info["entropy"]), **metrics,
            "controller_seconds": round(t_controller, 4), "children_seconds": round(t_children, 4),
            "save_seconds": round(time.time() - t0, 4), "seconds": round(time.time() - t_step, 4)}
        if tensorboard is not None:  # before the steps.jsonl line, which marks the step done
          tensorboard.write_step(step, summaries.step_scalars(
              step_row, rows, best["reward"] if best else None, rate * 60 if done_here else None))
        steps_log.write(json.dumps(step_row) + "\n")
        steps_log.flush()
      else:
        best = analysis.best_row(kept)
      raised.stop_if_all_raised()
      eta = (num_steps - step - 1) * m / (rate / 60) if rate else float("nan")
      fmt = lambda v: "-" if v is None else f"{v:.4f}"
      logging.info(
          "step %d/%d | layers %d | reward mean %.4f max %.4f | baseline %s | entropy %.2f | "
          "loss %s | best %.4f | %.1f children/min | controller %.0f ms | eta %.0fs",
          step + 1, num_steps, num_layers, rewards.mean(), rewards.max(),
          fmt(metrics.get("baseline")), info["entropy"], fmt(metrics.get("loss")),
          best["reward"] if best else 0.0, rate, t_controller * 1e3, eta)
    if primary:  # the search ran to its end: rows of steps past num_steps go
      history.drop_the_rest()
  finally:
    _close(history, steps_log, manager, tensorboard)
  if primary:  # also after a kill at the end
    best = _write_summary(workdir, kept, max(start, num_steps), space)
  else:
    best = analysis.best_row(kept)
  return SearchResult(best, len(kept), workdir)


def _close(*files) -> None:
  for f in files:
    if f is not None:
      f.close()


def _restore(manager, state, host, logged: set[int] | None, workdir: str):
  """The newest checkpoint that restores and whose step is logged in steps.jsonl: (step, state).

  A checkpoint that raises on restore (corrupt, truncated or missing files) is moved to
  ``workdir/checkpoints_unreadable/`` with a warning, and the next older one is tried; one whose
  step has no line in steps.jsonl (killed between the save and that line) is deleted and redone.
  With none left the controller starts from scratch. Either way the caller reuses the history rows
  of the steps after the restored one, so no child is trained again. (Half-written checkpoints,
  orbax's ``*.orbax-checkpoint-tmp-*`` folders, are never listed as steps and are cleaned up.)
  """
  dropped = []
  for step in sorted(manager.all_steps(), reverse=True):
    path = os.path.join(os.fspath(manager.directory), str(step))
    if logged is not None and step - 1 not in logged:
      logging.warning("checkpoint of controller step %d is newer than steps.jsonl (killed right "
                      "after saving it?); deleting it and redoing that step from the history",
                      step)
      shutil.rmtree(path, ignore_errors=True)
    else:
      try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(host(state))))
      except Exception as e:  # pylint: disable=broad-except
        error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        aside = os.path.join(workdir, "checkpoints_unreadable", str(step))
        logging.warning("checkpoint of controller step %d is unreadable (%s); moved to %s, trying "
                        "the one before", step, error, aside)
        shutil.rmtree(aside, ignore_errors=True)
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        shutil.move(path, aside)
      else:
        if dropped:
          logging.warning("restored the checkpoint of controller step %d instead of step %d; "
                          "steps from %d on reuse their rows in history.jsonl", step, dropped[0],
                          step)
          manager.reload()
        logging.info("resumed from checkpoint at controller step %d", step)
        return step, restored.state
    dropped.append(step)
  if dropped:
    logging.warning("no usable checkpoint (of controller steps %s); the controller starts from "
                    "scratch at step 0 and reuses the history rows", sorted(dropped))
    manager.reload()
  return 0, state


class _HistoryFile:
  """history.jsonl open for writing after the ``kept`` rows, the ``later`` rows still on disk.

  A row equal to the next one on disk is skipped; any other row cuts the file there first. So rows
  of an interrupted search stay on disk until the resumed one writes something else in their place.
  """

  def __init__(self, path: str, kept: list[dict], later: list[dict]):
    self._f = open(path, "r+b")  # pylint: disable=consider-using-with
    self._f.seek(sum(len(_line(r)) for r in kept))
    self._later = list(reversed(later))

  def write(self, row: dict) -> None:
    line = _line(row)
    if self._later and self._later[-1] == row:
      self._later.pop()
      self._f.seek(len(line), os.SEEK_CUR)
      return
    if self._later:
      self._later = []
      self._f.truncate()
    self._f.write(line)
    self._f.flush()

  def sync(self) -> None:
    os.fsync(self._f.fileno())

  def drop_the_rest(self) -> None:
    """Cuts rows still waiting to be reused (the search ended before their steps)."""
    if self._later:
      self._later = []
      self._f.truncate()

  def close(self) -> None:
    self._f.close()


def _line(row: dict) -> bytes:
  return (json.dumps(row) + "\n").encode()


def _share_start(cluster, start, state, pending, raised, digest, timeout_s):
  """Process 0 sends where the search starts (restored state, the rows of steps to redo)."""
  if cluster.is_primary:
    cluster.publish("start/state", flax.serialization.to_bytes(state))
    cluster.publish("start/info", json.dumps({
        "start": start, "pending": list(pending.values()), "raised": raised.to_json(),
        "config": digest}).encode())
  state = flax.serialization.from_bytes(state, cluster.fetch("start/state", timeout_s))
  info = json.loads(cluster.fetch("start/info", timeout_s))
  if info["config"] != digest:
    raise distributed.DistributedError(
        f"process {cluster.index} runs another config than process 0 (config hash "
        f"{digest[:12]} vs {info['config'][:12]}); give every process the same config and flags")
  pending = {(r["step"], r["index"]): r for r in info["pending"]}
  return info["start"], state, pending, _RaisedChildren.from_json(info["raised"])


class _RaisedChildren:
  """Has every child so far raised (not diverged)? That is a bug in the space or the data."""

  def __init__(self, rows=()):
    self.count, self.all_raised, self.first_error = 0, True, ""
    self.add(rows)

  def add(self, rows):
    for r in rows:
      if self.count == 0:
        self.first_error = r["error"]
      self.count += 1
      self.all_raised = self.all_raised and bool(
          r["failed"] and r["error"] and not r["error"].startswith("FloatingPointError")
          and "not finite" not in r["error"])

  def stop_if_all_raised(self):
    if self.count and self.all_raised:
      raise ChildrenFailError(f"every child so far failed; the first error:\n{self.first_error}")

  def to_json(self):
    return [self.count, self.all_raised, self.first_error]

  @classmethod
  def from_json(cls, obj):
    r = cls()
    r.count, r.all_raised, r.first_error = obj
    return r


def _write_summary(workdir: str, rows: list[dict], steps: int, space) -> dict | None:
  best = analysis.best_row(rows)
  fields = base.to_json(space) if dataclasses.is_dataclass(space) else {}
  _write_atomic(os.path.join(workdir, "summary.json"), json.dumps(
      {"best": best, "num_evaluated": len(rows), "controller_steps": steps,
       "search_space": fields}, indent=1))
  return best
