"""Training the m recurrent-cell children of a controller step together, and their reward.

Each child is a language model whose recurrent cell is one architecture of
:class:`~nas_jax.spaces.rnn_cell.RNNCellSpace`. A cell enters the model as its ``ops`` array
(a traced int array: every node computes its cheap elementwise candidates and selects one), so
``jax.vmap`` trains all m children side by side in one compiled program, compiled once for the
whole search. ``vmap=False`` trains the same children one after another (the baseline of
``benchmarks/cell_children.py``); the loops are ``trainer.lm_epoch`` and ``trainer.lm_nll``.
Reward (paper, Section 4.2): ``c / (validation perplexity)^2``, c = 80. A child whose last training
loss or validation loss is not finite gets reward 0 and is marked failed (``trainer.diverged``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nas_jax.training import lm, lm_cells, optim, ptb, trainer
from nas_jax.spaces import rnn_cell


@functools.lru_cache(maxsize=8)
def _programs(space: rnn_cell.RNNCellSpace, cfg: lm.LMConfig, vocab_size: int, vmapped: bool):
  if vmapped:
    # m children side by side are bound by the cells' elementwise work, not by dispatch:
    # recomputing each cell step in the backward pass (instead of saving every node's values)
    # and projecting the input inside the time loop (an 8x smaller gradient buffer per step) took
    # the vmapped m=8 children from 0.67x to 1.2x the speed of training them one after another on
    # the 2-core CPU (benchmarks/cell_children.py).
    cfg = dataclasses.replace(cfg, remat_cell=True, project_in_scan=True)
  cell = lm_cells.searched_lm_cell(space, cfg.init_scale)
  init = functools.partial(lm.init_params, vocab_size=vocab_size, cell=cell, cfg=cfg)
  train_step, eval_step = lm.make_train_step(cell, cfg), lm.make_eval_step(cell, cfg)
  if vmapped:
    init = trainer.children_map(init, (0,))
    train_step = trainer.children_map(train_step, (0, 0, 0, None, None, None, 0))
    eval_step = trainer.children_map(eval_step, (0, 0, 0, None, None))
  return (cell, jax.jit(init), jax.jit(train_step, donate_argnums=(0, 2)),
          jax.jit(eval_step, donate_argnums=(2,)))


def _train(space, ops, corpus, cfg, keys, vmapped, log_fn=None):
  """Trains one group (vmapped: leading axis m; else a single child). Returns (train, val) NLLs."""
  cell, init, train_step, eval_step = _programs(space, cfg, len(corpus.vocab), vmapped)
  m = ops.shape[0] if vmapped else None
  init_keys, drop_keys = (jax.vmap(jax.random.split, out_axes=1)(keys) if vmapped
                          else jax.random.split(keys))
  params = init(init_keys)
  stack = (lambda t: jax.tree.map(lambda a: jnp.broadcast_to(a, (m,) + a.shape).copy(), t)) \
      if vmapped else (lambda t: t)
  train_ids = corpus.train[:cfg.max_train_tokens + 1] if cfg.max_train_tokens else corpus.train
  stream = ptb.batchify(train_ids, cfg.batch_size)
  step = 0
  for epoch in range(1, cfg.epochs + 1):
    lr = optim.lm_learning_rate(cfg, epoch)
    params, nlls, step = trainer.lm_epoch(train_step, params, ops,
                                          stack(lm.init_carry(cell, cfg, cfg.batch_size)), stream,
                                          cfg, lr, drop_keys, step, children=vmapped)
    if log_fn:  # waits for the device: only when asked for
      ppl = np.exp(np.minimum(np.asarray(nlls[-1]) / (cfg.batch_size * cfg.bptt), 700.0))
      log_fn(f"  epoch {epoch}/{cfg.epochs} ({step} steps) lr {lr:.4g} last-batch train ppl "
             f"{np.round(np.atleast_1d(ppl), 2).tolist()}")
  val_ids = corpus.valid[:cfg.max_eval_tokens + 1] if cfg.max_eval_tokens else corpus.valid
  val_nlls, count = trainer.lm_nll(eval_step, params, ops,
                                   stack(lm.init_carry(cell, cfg, cfg.eval_batch_size)),
                                   ptb.batchify(val_ids, cfg.eval_batch_size), cfg.bptt)
  val_total = functools.reduce(operator.add, val_nlls, 0.0)  # on the device: no wait per segment
  return np.asarray(nlls[-1]), np.asarray(val_total) / count


def evaluate_cells(space: rnn_cell.RNNCellSpace, archs: Sequence[rnn_cell.CellArch],
                   corpus: ptb.Corpus, cfg: lm.LMConfig, keys: Sequence[jax.Array], *,
                   reward_constant: float = 80.0, vmap: bool = True,
                   reward_floor_ppl: float | None = None,
                   log_fn=None) -> list[trainer.ChildResult]:
  """Trains one LM per cell (all m at once when ``vmap``) and returns their rewards.

  Args:
    space: the cell search space.
    archs: m decoded cells.
    corpus: PTB (``nas_jax.training.ptb.load_ptb``).
    cfg: the child LM's config (``max_train_tokens``/``max_eval_tokens`` set a CPU budget).
    keys: one PRNG key per child (same key -> same child, vmapped or not).
    reward_constant: c in c / ppl^2.
    reward_floor_ppl: if given, the reward is c * max(0, 1/ppl^2 - 1/floor^2): a cell no better
      than this perplexity (e.g. :func:`unigram_ppl`) gets 0.
    vmap: train the m children in one vmapped program; False trains them one after another.
    log_fn: optional callable(str) for per-epoch progress.

  Returns:
    One :class:`~nas_jax.training.trainer.ChildResult` per cell; ``metrics`` holds ``val_ppl`` and
    ``train_ppl`` (None when failed).
  """
  t0 = time.time()
  ops = np.stack([space.ops(a) for a in archs]).astype(np.int32)
  if vmap:
    train_nll, val_nll = _train(space, jnp.asarray(ops), corpus, cfg, jnp.stack(keys), True,
                                log_fn)
  else:
    pairs = [_train(space, jnp.asarray(o), corpus, cfg, k, False, log_fn)
             for o, k in zip(ops, keys)]
    train_nll, val_nll = (np.array([p[i] for p in pairs]) for i in (0, 1))
  seconds = (time.time() - t0) / len(archs)
  n_params = lm_cells.cell_param_count(space, jax.eval_shape(
      lambda k: lm.init_params(k, len(corpus.vocab), lm_cells.searched_lm_cell(space), cfg),
      jax.random.key(0)))
  results = []
  for k in range(len(archs)):
    error = (trainer.diverged(train_nll[k], cfg.epochs)[0]
             or trainer.diverged(val_nll[k], cfg.epochs, "validation loss")[0])
    if error is not None:
      results.append(trainer.failed_result(error, {"val_ppl": None, "train_ppl": None}, n_params,
                                           seconds))
      continue
    results.append(trainer.ChildResult(
        reward=cell_reward(float(val_nll[k]), reward_constant, reward_floor_ppl),
        metrics={"val_ppl": math.exp(min(float(val_nll[k]), 700.0)),
                 "train_ppl": math.exp(min(float(train_nll[k]) / (cfg.batch_size * cfg.bptt),
                                           700.0))},
        param_count=n_params, failed=False, error="", seconds=seconds))
  return results


def cell_reward(val_nll: float, reward_constant: float = 80.0,
                floor_ppl: float | None = None) -> float:
  """c / ppl^2 of a child whose validation loss per token is ``val_nll`` (ppl = exp(nll)), or
  c * max(0, 1/ppl^2 - 1/floor^2) with a floor; computed as c * exp(-2 nll), which does not
  overflow for astronomic perplexities."""
  floor = 0.0 if floor_ppl is None else floor_ppl ** -2.0
  return reward_constant * max(0.0, math.exp(-2.0 * val_nll) - floor)


def unigram_ppl(corpus: ptb.Corpus, cfg: lm.LMConfig) -> float:
  """Validation perplexity of the unigram model of a child's training targets (add-0.5 counts),
  on the tokens a child is scored on (``max_train_tokens``/``max_eval_tokens`` as in training):
  what an LM reaches by predicting token frequencies and ignoring the text before."""
  train = np.asarray(corpus.train[:cfg.max_train_tokens + 1] if cfg.max_train_tokens
                     else corpus.train)
  valid = np.asarray(corpus.valid[:cfg.max_eval_tokens + 1] if cfg.max_eval_tokens
                     else corpus.valid)
  counts = np.bincount(train[1:], minlength=len(corpus.vocab)) + 0.5   # the predicted tokens
  return float(np.exp(-np.mean(np.log(counts[valid[1:]] / counts.sum()))))
