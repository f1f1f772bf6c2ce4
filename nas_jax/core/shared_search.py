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

What trains and scores the children is an *executor*, picked by the space:

* the CNN space: :class:`_CNNExecutor` over :mod:`nas_jax.training.shared_cnn` (one max-size
  masked network; reward = validation accuracy ** ``shared.reward_power``);
* the recurrent-cell space: :class:`nas_jax.training.shared_rnn.Executor` (one language model
  whose leaf projections every cell shares; reward = ``lm_child.reward_constant`` / ppl^2, the
  exact cell search's).

An executor has ``metric`` (the row value that ranks children), ``num_layers``, ``train_steps``
(per phase), ``init() -> dict`` (its part of the checkpointed state: shared weights, optimiser
state, ...), ``train_step(state, archs, g)`` (global training step g), ``loss_fields(losses,
phase)`` (the phase's training fields of ``steps.jsonl``), ``score(state, archs, j)`` (the metric
of m architectures on controller step j's validation minibatch), ``score_all(state, archs)``
(on the whole validation set), ``reward(value)``, ``error(value)`` ("" unless the child failed)
and ``fields(arch, value)`` (the row's metric fields and ``param_count``).

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

from nas_jax import config as config_lib, runtime
from nas_jax.core import searchers, workdir as workdir_lib
from nas_jax.core import search as search_lib
from nas_jax.spaces import base
from nas_jax.spaces.masked_cnn import MaskedCNN, exact_param_count
from nas_jax.spaces.rnn_cell import RNNCellSpace
from nas_jax.training import data as data_lib, shared_cnn, shared_rnn, trainer

SHARED, DERIVE = "shared", "derive"   # the "evaluation" of a history row


def enabled(cfg) -> bool:
  """Does the ConfigDict ``cfg`` ask for a weight-sharing search?"""
  shared = cfg.get("shared", None)
  return bool(shared is not None and shared.get("enabled", False))


def summarize(rows: list[dict], top_k: int) -> dict:
  """The summary of a weight-sharing search: ``best`` and ``top_k`` (unique by tokens, best
  reward first) of the derive rows, or of the controller-phase rows before the derive."""
  derived = [r for r in rows if r.get("evaluation") == DERIVE]
  pool, best = derived or rows, {}
  for r in pool:
    key = tuple(r["tokens"])
    if not r["failed"] and (key not in best or r["reward"] > best[key]["reward"]):
      best[key] = r
  top = sorted(best.values(), key=lambda r: -r["reward"])[:top_k]
  return {"best": top[0] if top else None, "top_k": top,
          "evaluation": DERIVE if derived else SHARED}


def run(cfg, workdir: str, *, space=None, dataset=None,
        reward_fn: Callable[[object, float], float] | None = None,
        progress: bool = True) -> search_lib.SearchResult:
  """Runs (or resumes) a weight-sharing search in ``workdir`` (see the module docstring).

  Args:
    cfg: a config with ``shared.enabled`` (e.g. ``nas_jax/configs/cnn_digits_shared.py``,
      ``rnn_ptb_shared_cpu.py``).
    workdir: output directory; a previous run of the same config there is resumed.
    space: the CNN or recurrent-cell search space (default: ``cfg.search_space``'s).
    dataset: the data (default: ``cfg.data``): images, or a PTB ``Corpus``.
    reward_fn: ``(arch, value) -> reward``, value the executor's metric (CNN: accuracy; cells:
      validation perplexity), replacing the space's reward (tests: a planted reward).
    progress: one line per epoch and one for the derive phase, logged at INFO and, where no
      logging set-up would show it (:func:`nas_jax.runtime.progress_is_logged`), also written to
      stderr unless ``progress=False``: as :func:`nas_jax.core.search.run_search` does.

  Returns:
    A :class:`nas_jax.core.search.SearchResult` whose ``best`` is the best derived row.
  """
  config = config_lib.parse(cfg)
  if jax.process_count() > 1:
    raise config_lib.ConfigError("config.shared.enabled: the weight-sharing search runs in one "
                                 "process; start it without --distributed")
  space = space or config.search_space
  # pylint: disable-next=protected-access  (a space passed in is checked too)
  config_lib._check_shared_space(space, config)
  sh, m = config.shared, config.search.children_per_step
  searcher = searchers.make_searcher(config.search.searcher, config.controller)
  metric = _executor_class(space).metric
  record = workdir_lib.config_record(config, space, metric)
  rows_per_phase = sh.controller_steps * m
  wd = workdir_lib.open_workdir(
      workdir, record, config.search, True, space,
      rows_per_step=lambda s: rows_per_phase if s < sh.epochs else sh.derive_samples,
      summarize=lambda rows: summarize(rows, sh.derive_top_k))
  wd.check()
  if dataset is None:
    dataset = data_lib.load(config.data, config.seed)
  loop = _Loop(config, space, searcher, dataset, reward_fn)
  loop.show = progress
  with wd, search_lib._Interrupt() as interrupt:  # pylint: disable=protected-access
    wd.open()
    start, state, rows = wd.restore(loop.init_state())
    # A restored array is committed to its device, a new one is not: the programs would compile
    # again for the restored state (jit's cache keys on it). Through the host, both are alike.
    state = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), state)
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
      wd.end_step(phase, state, step_row, step_rows, kept, metric, rate)
      interrupt.check()
      loop.log(phase, step_row, kept, time.time() - t_run, phase - start + 1)
    wd.finish(kept, sh.epochs + 1)
  return search_lib.SearchResult(summarize(kept, 1)["best"], len(kept), workdir, metric)


def _executor_class(space):
  return shared_rnn.Executor if isinstance(space, RNNCellSpace) else _CNNExecutor


class _CNNExecutor:
  """The CNN space's executor: the shared masked network of :mod:`nas_jax.training.shared_cnn`
  (values: validation accuracies)."""

  metric = base.ACCURACY

  def __init__(self, config, space, dataset, keys: dict):
    sh = config.shared
    self.sh, self.keys = sh, keys
    self.num_layers = space.num_layers(0)
    image_shape = tuple(int(d) for d in dataset.train_images.shape[1:])
    self.net = MaskedCNN(space, self.num_layers, image_shape, dataset.num_classes)
    self.image_channels, self.num_classes = image_shape[2], dataset.num_classes
    n = dataset.train_images.shape[0]
    self.bs = min(sh.batch_size, n)
    self.steps_per_epoch = n // self.bs
    self.train_steps = sh.train_steps or self.steps_per_epoch
    total = sh.epochs * self.train_steps
    self.progs = shared_cnn.programs(self.net, sh, bool(dataset.augment), self.steps_per_epoch,
                                     total)
    self.tx = shared_cnn.optimizer(sh, self.steps_per_epoch, total)
    self.train_x, self.train_y = jnp.asarray(dataset.train_images), jnp.asarray(
        dataset.train_labels)
    self.val_x, self.val_y = jnp.asarray(dataset.val_images), jnp.asarray(dataset.val_labels)
    self.eval_bs = min(sh.eval_batch_size, self.val_x.shape[0])
    self._perm = (None, None)

  def init(self) -> dict:
    params = shared_cnn.init(self.net, self.keys["weights"])
    return {"params": params, "opt_state": self.tx.init(params)}

  def _train_indices(self, g: int) -> np.ndarray:
    epoch, b = divmod(g, self.steps_per_epoch)
    if self._perm[0] != epoch:
      rng = trainer.host_rng(jax.random.fold_in(self.keys["data"], epoch))
      self._perm = (epoch, rng.permutation(self.train_x.shape[0]))
    return self._perm[1][b * self.bs:(b + 1) * self.bs]

  def _val_indices(self, j: int) -> np.ndarray:
    rng = trainer.host_rng(jax.random.fold_in(self.keys["val"], j))
    return rng.permutation(self.val_x.shape[0])[:self.eval_bs]

  def train_step(self, ws: dict, archs, g: int):
    params, opt_state, loss = self.progs.train_step(
        ws["params"], ws["opt_state"], shared_cnn.encode(self.net, archs), self.train_x,
        self.train_y, self._train_indices(g), self.keys["aug"], g)
    return {**ws, "params": params, "opt_state": opt_state}, loss

  def loss_fields(self, losses: list, phase: int) -> dict:
    train_loss = float(np.mean(np.asarray(losses))) if losses else float("nan")
    if losses and not np.isfinite(train_loss):
      raise FloatingPointError(f"the shared weights' training loss became {train_loss} in epoch "
                               f"{phase}; lower config.shared.learning_rate or set "
                               "config.shared.grad_clip")
    return {"train_loss": train_loss}

  def score(self, ws: dict, archs, j: int) -> np.ndarray:
    idx = self._val_indices(j)
    correct = self.progs.eval_step(ws["params"], shared_cnn.encode(self.net, archs), self.val_x,
                                   self.val_y, idx, np.ones(len(idx), bool))
    return np.asarray(correct) / len(idx)

  def score_all(self, ws: dict, archs) -> np.ndarray:
    return shared_cnn.accuracy(self.progs, ws["params"], shared_cnn.encode(self.net, archs),
                               self.val_x, self.val_y, self.eval_bs)

  def reward(self, acc: float) -> float:
    return float(acc) ** self.sh.reward_power

  def error(self, acc: float) -> str:
    del acc
    return ""

  def fields(self, arch, acc: float) -> dict:
    return {"val_accuracy": float(acc), "val_accuracies": [float(acc)],
            "param_count": exact_param_count(arch, self.image_channels, self.num_classes)}


class _Loop:
  """The pieces of one weight-sharing search: its executor, searcher and key streams."""

  def __init__(self, config, space, searcher, dataset, reward_fn):
    sh = config.shared
    self.sh, self.space, self.searcher, self.reward_fn = sh, space, searcher, reward_fn
    self.m, self.reusable = config.search.children_per_step, {}
    self.show = True  # progress lines on stderr where no logging set-up shows them
    root = jax.random.key(config.seed)
    # Stream 0 initialises the searcher as the exact search does (same controller at step 0).
    self.init_key = jax.random.fold_in(root, 0)
    (weights_key, self.train_arch_key, data_key, aug_key, self.ctrl_key, val_key,
     self.derive_key) = (jax.random.fold_in(root, 100 + i) for i in range(7))
    keys = {"weights": weights_key, "data": data_key, "aug": aug_key, "dropout": aug_key,
            "val": val_key}
    self.ex = _executor_class(space)(config, space, dataset, keys)
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
    return {"step": phase, "index": index, "num_layers": self.num_layers,
            "tokens": tokens.tolist(), "arch": base.to_json(arch),
            "description": self.space.describe(arch), "reward": reward,
            **self.ex.fields(arch, value), "seconds": round(seconds, 4), "failed": bool(error),
            "error": error, "evaluation": evaluation, **extra}

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
    fmt = lambda v: "-" if v is None else f"{v:.4f}"
    name = self.ex.metric.name
    if step_row["evaluation"] == DERIVE:
      best = summarize(rows, 1)["best"]
      runtime.log_progress(self.show, "derive: %d architectures on the validation set | reward mean %.4f max %.4f "
                 "| best %s (%s %s) | %.0fs", self.sh.derive_samples,
                 step_row["reward_mean"], step_row["reward_max"],
                 best["description"] if best else "-", name,
                 fmt(best.get(name) if best else None), elapsed)
      return
    left = self.sh.epochs - phase - 1
    runtime.log_progress(self.show, "epoch %d/%d | train loss %.4f | reward mean %s max %s | baseline %s | "
               "entropy %s | train %.1fs eval %.1fs controller %.1fs | eta %.0fs",
               phase + 1, self.sh.epochs, step_row["train_loss"], fmt(step_row["reward_mean"]),
               fmt(step_row["reward_max"]), fmt(step_row.get("baseline")),
               fmt(step_row["entropy"]), step_row["train_seconds"],
               step_row["children_seconds"], step_row["controller_seconds"],
               elapsed / phases_run * left)


def _mean_metrics(metrics: list[dict]) -> dict:
  """The searcher's metrics over a phase's controller steps: the mean; the baseline's last."""
  if not metrics or not metrics[0]:
    return {}
  out = {k: float(np.mean([mt[k] for mt in metrics])) for k in metrics[0]}
  out["baseline"] = float(metrics[-1].get("baseline", out.get("baseline", 0.0)))
  return out
