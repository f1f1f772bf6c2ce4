"""The weight-sharing search (ENAS, Pham et al. 2018): the same controller and REINFORCE, children
scored under one set of shared weights instead of trained from scratch.

``config.shared`` (:class:`nas_jax.config.SharedConfig`) is the schedule. Each of
``shared.epochs`` phases:

(a) the shared weights train for ``train_steps`` minibatches, each on ``children_per_batch``
    architectures freshly drawn from the searcher (the controller, or uniform for random
    search), their gradients averaged;
(b) the searcher takes ``controller_steps`` steps: each samples ``search.children_per_step``
    architectures, scores them on one validation minibatch under the shared weights and updates
    the controller by REINFORCE (:mod:`nas_jax.core.reinforce`; random search learns nothing);

then (c) derive: ``derive_samples`` architectures drawn from the trained searcher are scored on
the whole validation set; ``summary.json`` holds the best and the ``derive_top_k`` best (unique by
tokens), for ``experiments/train_child.py`` (CNN) or ``experiments/train_lm.py
--config.cell=WORKDIR/summary.json`` (cells) to retrain from scratch.

What trains and scores the children is an *executor* (:class:`nas_jax.training.shared.Executor`,
the protocol, written down there), picked for the space by :mod:`nas_jax.experiment`: the CNN
space's (:class:`nas_jax.training.shared_cnn.Executor`) or the recurrent-cell space's
(:class:`nas_jax.training.shared_rnn.Executor`).

The workdir is :mod:`nas_jax.core.workdir`'s, with a workdir *step* = one phase (the derive is step
``epochs``): ``history.jsonl`` has one row per scored architecture (``"evaluation": "shared"`` for
(b), ``"derive"`` for (c); ``index`` = controller step within the phase x m + child),
``steps.jsonl`` one row per phase, and the checkpoint after each phase holds the searcher state,
the shared weights and their optimiser state. The data position is a function of the phase (every
minibatch, validation batch and sampled architecture comes from ``fold_in(stream, global index)``),
so a run killed anywhere and restarted redoes the phase it was in and writes the history of an
uninterrupted run; rows of that phase already in the history are reused where their tokens match.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from nas_jax import runtime
from nas_jax.core import distributed, history, loop as loop_lib, workdir as workdir_lib
from nas_jax.training import data as data_lib, shared as shared_lib

SHARED, DERIVE = "shared", "derive"   # the "evaluation" of a history row


def summarize(rows: list[dict], top_k: int) -> dict:
  """The summary of a weight-sharing search: ``best`` and ``top_k`` (unique by tokens, best
  reward first) of the derive rows, or of the controller-phase rows before the derive."""
  derived = [r for r in rows if r.get("evaluation") == DERIVE]
  top = sorted(history.unique_best(derived or rows), key=lambda r: -r["reward"])[:top_k]
  return {"best": top[0] if top else None, "top_k": top,
          "evaluation": DERIVE if derived else SHARED}


def run(config, workdir: str, *, space, searcher, executor_class, dataset=None,
        reward_fn: Callable[[object, float], float] | None = None,
        progress: bool = True) -> loop_lib.SearchResult:
  """Runs (or resumes) the weight-sharing search of ``config`` (parsed, ``shared.enabled``) in
  ``workdir`` (see the module docstring).

  Args:
    config: the parsed config (``nas_jax.config.parse``).
    workdir: output directory; a previous run of the same config there is resumed.
    space: the space searched; ``searcher``: its searcher; ``executor_class``: the space's
      executor (:class:`nas_jax.training.shared.Executor`).
    dataset: the data (default: ``config.data``): images, or a PTB ``Corpus``.
    reward_fn: ``(arch, value) -> reward``, value the executor's metric (CNN: accuracy; cells:
      validation perplexity), replacing the space's reward (tests: a planted reward).
    progress: one line per epoch and one for the derive phase (:mod:`nas_jax.core.loop`).

  Returns:
    A :class:`nas_jax.core.loop.SearchResult` whose ``best`` is the best derived row.
  """
  cluster = distributed.current()
  try:
    return _run(config, workdir, cluster, space, searcher, executor_class, dataset, reward_fn,
                progress)
  except BaseException as e:  # the other processes stop too, instead of waiting for this one
    why = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
    cluster.abort(f"process {cluster.index} stopped: {why}")
    raise


def _run(config, workdir, cluster, space, searcher, executor_class, dataset, reward_fn,
         progress):
  sh, m = config.shared, config.search.children_per_step
  metric = executor_class.metric
  record = workdir_lib.config_record(config, space, metric)
  rows_per_phase = sh.controller_steps * m
  wd = workdir_lib.open_workdir(
      workdir, record, config.search, cluster.is_primary, space,
      rows_per_step=lambda s: rows_per_phase if s < sh.epochs else sh.derive_samples,
      summarize=lambda rows: summarize(rows, sh.derive_top_k))
  wd.check()
  if dataset is None:
    dataset = data_lib.load(config.data, config.seed)
  settings = shared_lib.Settings(sh, m, config.lm_child)
  loop = _Loop(settings, config.seed, space, searcher, executor_class, dataset, reward_fn)
  loop.show = progress
  d = len(getattr(loop.ex, "devices", ())) or 1
  runtime.log_progress(progress, "weight sharing on %d device(s): %d architecture(s) per "
                       "minibatch, %d per device", d, sh.children_per_batch,
                       sh.children_per_batch // d)
  with wd, loop_lib.Interrupt() as interrupt:
    wd.open()
    start, state, rows = cluster.share_start(*wd.restore(loop.init_state()),
                                             history.run_digest(record),
                                             config.search.gather_timeout_s)
    state = {"searcher": jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), state["searcher"]),
             **loop.ex.place.state({k: v for k, v in state.items() if k != "searcher"})}
    kept = [r for r in rows if r["step"] < start]
    loop.reusable = {(r["step"], r["index"]): r for r in rows if r["step"] >= start}
    t_run, done = time.time(), 0
    for phase in range(start, sh.epochs + 1):
      t0 = time.time()
      if phase < sh.epochs:
        state, step_rows, step_row = loop.phase(state, phase, wd, interrupt)
      else:
        step_rows, step_row = loop.derive(state, phase, wd, interrupt)
      kept += step_rows
      done += step_row["children"]
      rate = done / max(time.time() - t_run, 1e-9) * 3600
      step_row["seconds"] = round(time.time() - t0, 4)
      with interrupt.writing():   # several processes: process 0's replica is saved
        wd.end_step(phase, state if cluster.count == 1 else jax.tree.map(np.asarray, state),
                    step_row, step_rows, kept, metric, rate)
      interrupt.check()
      loop.log(phase, step_row, kept, time.time() - t_run, phase - start + 1)
    wd.finish(kept, sh.epochs + 1)
  return loop_lib.SearchResult(summarize(kept, 1)["best"], len(kept), workdir, metric)


class _Loop:
  """The pieces of one weight-sharing search: its executor, searcher and key streams."""

  def __init__(self, settings, seed, space, searcher, executor_class, dataset, reward_fn):
    sh = settings.shared
    self.sh, self.space, self.searcher, self.reward_fn = sh, space, searcher, reward_fn
    self.m, self.reusable = settings.children_per_step, {}
    self.show = True  # progress lines on stderr where no logging set-up shows them
    root = jax.random.key(seed)
    # Stream 0 initialises the searcher as the exact search does (same controller at step 0).
    self.init_key = jax.random.fold_in(root, 0)
    (weights_key, self.train_arch_key, data_key, aug_key, self.ctrl_key, val_key,
     self.derive_key) = (jax.random.fold_in(root, 100 + i) for i in range(7))
    keys = {"weights": weights_key, "data": data_key, "aug": aug_key, "dropout": aug_key,
            "val": val_key}
    self.ex = executor_class(settings, space, dataset, keys)
    self.num_layers, self.train_steps = self.ex.num_layers, self.ex.train_steps
    self.plan = space.plan(self.num_layers)

  def init_state(self) -> dict:
    return {"searcher": self.searcher.init(self.init_key, self.space.decisions),
            **self.ex.init()}

  def _propose(self, searcher_state, key, n):
    """n architectures, drawn m at a time (draw d from ``fold_in(key, d)``): one compiled sampler
    for the training steps, the controller steps and the derive."""
    draws = [self.searcher.propose(searcher_state, jax.random.fold_in(key, d), self.plan,
                                   self.space.decisions, self.m) for d in range(-(-n // self.m))]
    tokens = np.concatenate([t for t, _ in draws])[:n]
    info = {"entropy": float(np.mean([i["entropy"] for _, i in draws]))}
    return tokens, [self.space.decode(self.plan, t) for t in tokens], info

  def _row(self, phase, index, tokens, arch, value, seconds, evaluation, **extra) -> dict:
    error = self.ex.error(value)
    if error:
      reward = 0.0
    elif self.reward_fn is not None:
      reward = float(self.reward_fn(arch, value))
    else:
      reward = float(self.ex.reward(value))
    metrics = self.ex.fields(arch, value)
    param_count = metrics.pop("param_count")
    return loop_lib.child_row(phase, index, self.num_layers, tokens, arch, self.space,
                              reward=reward, metrics=metrics, param_count=param_count,
                              seconds=round(seconds, 4), failed=bool(error), error=error,
                              evaluation=evaluation, **extra)

  def _reused(self, phase: int, first: int, tokens) -> list[dict] | None:
    """The rows of these children from an interrupted run, if all are there with these tokens."""
    old = [self.reusable.pop((phase, first + k), None) for k in range(len(tokens))]
    ok = all(r is not None and r["tokens"] == t.tolist() for r, t in zip(old, tokens))
    return old if ok else None

  def phase(self, state, phase, wd, interrupt):
    """(a) shared-weights training, then (b) the controller steps of one phase."""
    sh, m = self.sh, self.m
    t0 = time.time()
    ws = {k: v for k, v in state.items() if k != "searcher"}
    losses = []
    for i in range(self.train_steps):
      g = phase * self.train_steps + i
      _, archs, _ = self._propose(state["searcher"], jax.random.fold_in(self.train_arch_key, g),
                                  sh.children_per_batch)
      ws, loss = self.ex.train_step(ws, archs, g)
      losses.append(loss)
    loss_fields = self.ex.loss_fields(losses, phase)
    state = {**state, **ws}
    t_train = time.time() - t0

    rows, metrics, infos, evaluated = [], [], [], 0
    t_eval = t_ctrl = 0.0
    for c in range(sh.controller_steps):
      j = phase * sh.controller_steps + c
      t1 = time.time()
      tokens, archs, info = self._propose(state["searcher"],
                                          jax.random.fold_in(self.ctrl_key, j), m)
      t2 = time.time()
      step_rows = self._reused(phase, c * m, tokens)
      if step_rows is None:
        values = self.ex.score(ws, archs, j)
        seconds = (time.time() - t2) / m
        step_rows = [self._row(phase, c * m + k, tokens[k], archs[k], values[k], seconds, SHARED,
                               controller_step=j) for k in range(m)]
        evaluated += m
      for r in step_rows:
        wd.write_row(r)
        interrupt.check()
      t3 = time.time()
      rewards = np.array([r["reward"] for r in step_rows], np.float32)
      searcher_state, met = self.searcher.feedback(state["searcher"], tokens, rewards, self.plan,
                                                   self.space.decisions)
      state = {**state, "searcher": searcher_state}
      rows += step_rows
      metrics.append(met)
      infos.append(info)
      t_eval += t3 - t2
      t_ctrl += (t2 - t1) + (time.time() - t3)
    rewards = np.array([r["reward"] for r in rows], np.float32)
    step_row = {"step": phase, "evaluation": SHARED, "num_layers": self.num_layers,
                "children": evaluated, **loss_fields,
                "train_steps": self.train_steps,
                "reward_mean": float(rewards.mean()) if rows else None,
                "reward_max": float(rewards.max()) if rows else None,
                "entropy": float(np.mean([i["entropy"] for i in infos])) if infos else None,
                **_mean_metrics(metrics),
                "train_seconds": round(t_train, 4), "controller_seconds": round(t_ctrl, 4),
                "children_seconds": round(t_eval, 4)}
    return state, rows, step_row

  def derive(self, state, phase, wd, interrupt):
    """(c): ``derive_samples`` architectures scored on the whole validation set."""
    K, m = self.sh.derive_samples, self.m
    t0 = time.time()
    tokens, archs, info = self._propose(state["searcher"], self.derive_key, K)
    t_ctrl = time.time() - t0
    ws = {k: v for k, v in state.items() if k != "searcher"}
    rows, evaluated = [], 0
    for first in range(0, K, m):  # m at a time: the controller steps' compiled program
      chunk = list(range(first, min(first + m, K)))
      t1 = time.time()
      chunk_rows = self._reused(phase, first, tokens[chunk])
      if chunk_rows is None:
        padded = [archs[k] for k in chunk] + [archs[chunk[-1]]] * (m - len(chunk))
        values = self.ex.score_all(ws, padded)
        seconds = (time.time() - t1) / len(chunk)
        chunk_rows = [self._row(phase, k, tokens[k], archs[k], values[n], seconds, DERIVE)
                      for n, k in enumerate(chunk)]
        evaluated += len(chunk)
      for r in chunk_rows:
        wd.write_row(r)
        interrupt.check()
      rows += chunk_rows
    rewards = np.array([r["reward"] for r in rows], np.float32)
    step_row = {"step": phase, "evaluation": DERIVE, "num_layers": self.num_layers,
                "children": evaluated, "reward_mean": float(rewards.mean()),
                "reward_max": float(rewards.max()), "entropy": float(info["entropy"]),
                "controller_seconds": round(t_ctrl, 4),
                "children_seconds": round(time.time() - t0 - t_ctrl, 4)}
    return rows, step_row

  def log(self, phase, step_row, rows, elapsed, phases_run):
    fmt = loop_lib.fmt
    name = self.ex.metric.name
    if step_row["evaluation"] == DERIVE:
      best = summarize(rows, 1)["best"]
      runtime.log_progress(
          self.show, "derive: %d architectures on the validation set | reward mean %.4f max %.4f "
          "| best %s (%s %s) | %.0fs", self.sh.derive_samples, step_row["reward_mean"],
          step_row["reward_max"], best["description"] if best else "-", name,
          fmt(best.get(name) if best else None), elapsed)
      return
    left = self.sh.epochs - phase - 1
    runtime.log_progress(
        self.show, "epoch %d/%d | train loss %.4f | reward mean %s max %s | baseline %s | "
        "entropy %s | train %.1fs eval %.1fs controller %.1fs | eta %.0fs",
        phase + 1, self.sh.epochs, step_row["train_loss"], fmt(step_row["reward_mean"]),
        fmt(step_row["reward_max"]), fmt(step_row.get("baseline")), fmt(step_row["entropy"]),
        step_row["train_seconds"], step_row["children_seconds"], step_row["controller_seconds"],
        elapsed / phases_run * left)


def _mean_metrics(metrics: list[dict]) -> dict:
  """The searcher's metrics over a phase's controller steps: the mean; the baseline's last."""
  if not metrics or not metrics[0]:
    return {}
  out = {k: float(np.mean([mt[k] for mt in metrics])) for k in metrics[0]}
  out["baseline"] = float(metrics[-1].get("baseline", out.get("baseline", 0.0)))
  return out
