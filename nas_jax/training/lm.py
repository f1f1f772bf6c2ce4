"""A word-level recurrent language model with any cell, and its trainer (Zaremba et al. 2014).

The model: embedding -> L recurrent layers (any :class:`Cell`) -> softmax (optionally tied to
the embedding). Regularisation: dropout on the non-recurrent connections as in Zaremba et al.
(2014), or variational dropout as in Gal & Ghahramani (2016): one mask per sequence for inputs,
outputs and the recurrent state, plus word-type dropout on the embedding. Training: truncated BPTT
over contiguous streams with the state carried across segments, SGD (or Adam) with global-norm
clipping, optional decoupled weight decay and the learning-rate decay of Zaremba et al.; perplexity
on validation and test.

Speed: each layer's input projection for all T steps is one matmul outside the time loop; only the
recurrent product runs inside ``lax.scan``. A cell is three pure functions (:class:`Cell`), and the
cell's discrete choices (``ops``, an int array; empty for fixed cells) are an argument, so
``jax.vmap`` trains m different cells in one compiled program (:func:`make_train_step`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nas_jax.training import optim, ptb, trainer


class Cell(NamedTuple):
  """A recurrent cell as pure functions; the carry is a tuple of (B, H) arrays.

  init(key, input_size, hidden_size) -> params
  project(params, x_TxBxI) -> xp_TxBxP   (input-side work for all steps at once)
  step(params, ops, carry, xp_BxP, h_mask_BxH) -> (carry, out_BxH)
    (h_mask multiplies the previous output before the recurrent product: variational dropout)
  init_carry(batch, hidden_size) -> carry
  select(params, ops) -> params, or None: the weights the architecture ``ops`` uses, picked once
    per segment before the time loop (a cell whose parameters hold every architecture's, as
    ENAS's: its gradient then flows into the picked weights at each step, not the whole set)
  """
  init: Callable
  project: Callable
  step: Callable
  init_carry: Callable
  select: Callable | None = None   # (params, ops) -> params: once per segment, before the scan


def _uniform(key, shape, scale):
  return jax.random.uniform(key, shape, jnp.float32, -scale, scale)


def lstm_cell(init_scale: float = 0.1, forget_bias: float = 0.0) -> Cell:
  """The LSTM of Zaremba et al. (2014) (gates i, g, f, o; no peepholes)."""

  def init(key, input_size, hidden_size):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"wx": _uniform(k1, (input_size, 4 * hidden_size), init_scale),
            "wh": _uniform(k2, (hidden_size, 4 * hidden_size), init_scale),
            "b": _uniform(k3, (4 * hidden_size,), init_scale)}

  def project(params, x):
    return x @ params["wx"] + params["b"]

  def step(params, ops, carry, xp, h_mask):
    del ops
    c, h = carry
    gates = xp + (h * h_mask) @ params["wh"]
    i, g, f, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f + forget_bias) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h

  def init_carry(batch, hidden_size):  # two buffers: the train step donates the carry
    return (jnp.zeros((batch, hidden_size), jnp.float32),
            jnp.zeros((batch, hidden_size), jnp.float32))

  return Cell(init, project, step, init_carry)


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """Model and training hyperparameters (defaults: Zaremba et al.'s *small* configuration).

  The update of one step, with g the gradient clipped to global norm ``max_grad_norm``, lr the
  epoch's learning rate and wd ``weight_decay``::

    sgd:  p <- p - lr * (g + wd * p)
    adam: p <- p - lr * (adam(g) + wd * p)     (AdamW: Loshchilov & Hutter 2019; optax.adamw)

  The weight decay is *decoupled*: it is not part of the loss, so it is neither clipped nor (Adam)
  divided by the second-moment estimate; for SGD it is PyTorch's ``SGD(weight_decay=wd)`` after
  ``clip_grad_norm_``. Since the loss is summed over the ``bptt`` steps (Zaremba et al.), an L2
  coefficient ``k`` on a per-token mean loss corresponds to ``wd = bptt * k`` here. It applies to
  every parameter (biases and embedding too). ``sgd`` with ``wd = 0`` is the update of before these
  fields existed, bit for bit; ``adam`` and ``wd > 0`` update the embedding densely (every row).
  """
  num_layers: int = 2
  hidden_size: int = 200
  embed_size: int = 200
  tie_embeddings: bool = False
  init_scale: float = 0.1
  dropout: float = 0.0              # on non-recurrent connections (Zaremba)
  variational: bool = False         # Gal: per-sequence masks, also on the recurrent state
  embed_dropout: float = 0.0        # word-type dropout on the embedding (Gal)
  batch_size: int = 20
  bptt: int = 20
  epochs: int = 13
  learning_rate: float = 1.0
  lr_decay: float = 0.5
  decay_after_epoch: int = 4        # lr = lr0 * decay ** max(epoch - decay_after_epoch, 0), epoch from 1
  max_grad_norm: float = 5.0
  eval_batch_size: int = 20
  test_batch_size: int = 1
  max_train_tokens: int = 0         # 0 = the whole training set per epoch (a CPU search budget otherwise)
  max_eval_tokens: int = 0          # 0 = the whole validation set
  remat_cell: bool = False           # recompute each cell step in the backward pass (jax.checkpoint)
  project_in_scan: bool = False     # input projection per time step inside the scan (not all at once)
  optimizer: str = "sgd"            # sgd | adam (optax.scale_by_adam, its default b1, b2, eps)
  weight_decay: float = 0.0         # decoupled: p -= lr * weight_decay * p per step (all params)

  def __post_init__(self):
    if self.optimizer not in optim.LM_OPTIMIZERS:
      raise ValueError(f"lm.optimizer: unknown optimizer {self.optimizer!r}; use one of "
                       f"{optim.LM_OPTIMIZERS}")
    if self.weight_decay < 0:
      raise ValueError(f"lm.weight_decay: must be >= 0, got {self.weight_decay}")


def init_params(key, vocab_size: int, cell: Cell, cfg: LMConfig):
  keys = jax.random.split(key, cfg.num_layers + 2)
  params = {"embed": _uniform(keys[0], (vocab_size, cfg.embed_size), cfg.init_scale),
            "layers": [cell.init(keys[1 + l], cfg.embed_size if l == 0 else cfg.hidden_size,
                                 cfg.hidden_size) for l in range(cfg.num_layers)],
            "softmax_b": _uniform(keys[-1], (vocab_size,), cfg.init_scale)}
  if not cfg.tie_embeddings:
    params["softmax_w"] = _uniform(jax.random.fold_in(keys[-1], 1),
                                   (cfg.hidden_size, vocab_size), cfg.init_scale)
  return params


def init_carry(cell: Cell, cfg: LMConfig, batch: int):
  return tuple(cell.init_carry(batch, cfg.hidden_size) for _ in range(cfg.num_layers))


def _mask(key, shape, rate):
  if key is None or rate <= 0:
    return jnp.ones(shape, jnp.float32)
  return jax.random.bernoulli(key, 1 - rate, shape).astype(jnp.float32) / (1 - rate)


def _keys(key, cfg: LMConfig) -> list:
  """The dropout keys of one segment; the last one is the embedding's (word-type dropout)."""
  n = 2 * cfg.num_layers + 3
  return list(jax.random.split(key, n)) if key is not None else [None] * n


def _embed_mask(key, vocab_size: int, cfg: LMConfig):
  """(V, 1) word-type dropout mask (Gal), or None."""
  if cfg.embed_dropout > 0 and key is not None:
    return _mask(key, (vocab_size, 1), cfg.embed_dropout)
  return None


def apply(params, ops, carry, inputs_BxT, cell: Cell, cfg: LMConfig, key=None, embedded=None):
  """Runs the LM over one segment. Returns (logits_TxBxV, new carry). key=None: no dropout.

  ``embedded`` (T x B x E), if given, replaces the embedding lookup (word-type dropout already
  applied): the train step differentiates with respect to the looked-up rows.
  """
  b, t = inputs_BxT.shape
  keys = _keys(key, cfg)
  embed_key = keys.pop()
  if embedded is None:
    embed = params["embed"]
    mask = _embed_mask(embed_key, embed.shape[0], cfg)
    x = (embed if mask is None else embed * mask)[inputs_BxT.T]  # T x B x E
  else:
    x = embedded
  var = cfg.variational
  new_carry = []
  for l, layer_params in enumerate(params["layers"]):
    in_shape = (1,) + x.shape[1:] if var else x.shape
    x = x * _mask(keys.pop(), in_shape, cfg.dropout)
    h_mask = _mask(keys.pop(), (b, cfg.hidden_size), cfg.dropout if var else 0.0)
    if cell.select is not None:   # the weights ``ops`` uses, picked once, not at every time step
      layer_params = cell.select(layer_params, ops)
    if cfg.project_in_scan:
      xp = x
      step = lambda c, x_t: cell.step(layer_params, ops, c, cell.project(layer_params, x_t), h_mask)
    else:
      xp = cell.project(layer_params, x)
      step = lambda c, xp_t: cell.step(layer_params, ops, c, xp_t, h_mask)
    if cfg.remat_cell:
      step = jax.checkpoint(step)
    c, x = jax.lax.scan(step, carry[l], xp)
    new_carry.append(c)
  out_shape = (1,) + x.shape[1:] if var else x.shape
  x = x * _mask(keys.pop(), out_shape, cfg.dropout)
  w = params["embed"].T if cfg.tie_embeddings else params["softmax_w"]
  logits = (x.reshape(t * b, -1) @ w + params["softmax_b"]).reshape(t, b, -1)  # 2-D matmul
  return logits, tuple(new_carry)


def _nll_sum(logits_TxBxV, targets_BxT):
  """Sum over time and batch of the negative log-likelihood (logsumexp - target logit)."""
  logits = logits_TxBxV.reshape(-1, logits_TxBxV.shape[-1])
  targets = targets_BxT.T.reshape(-1)
  target_logit = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
  return jnp.sum(jax.nn.logsumexp(logits, axis=-1) - target_logit)


class AdamState(NamedTuple):
  """The train step's state under ``optimizer="adam"`` (under SGD it is the params alone)."""
  params: Any
  opt_state: Any


def init_train_state(params, cfg: LMConfig):
  """What :func:`make_train_step` threads: ``params`` (SGD) or ``AdamState(params, moments)``."""
  return params if cfg.optimizer == "sgd" else AdamState(params, optim.lm_adam().init(params))


def state_params(state, cfg: LMConfig):
  """The parameters inside a train state (:func:`init_train_state`)."""
  return state if cfg.optimizer == "sgd" else state.params


def make_train_step(cell: Cell, cfg: LMConfig, sparse_embedding: bool | None = None):
  """(state, ops, carry, inputs, targets, lr, key) -> (state, carry, nll_sum).

  ``state`` is :func:`init_train_state`'s: the params under SGD, ``AdamState`` under Adam.
  The loss is Zaremba et al.'s: summed over time steps, averaged over the batch; the gradient is
  clipped to global norm ``max_grad_norm``, then the update of :class:`LMConfig`'s docstring.
  Not jitted: jit (or vmap, then jit) it.

  With an untied embedding the step never forms the dense (V x E) embedding gradient: it takes the
  gradient of the B*T looked-up rows, sums the rows of each distinct word (that sum *is* the dense
  gradient's row, so the clipping norm is unchanged) and adds the update to those rows only
  (``sparse_embedding``: default True for SGD without weight decay and an untied embedding; Adam
  and weight decay move every row).
  """
  dense_only = cfg.optimizer != "sgd" or cfg.weight_decay > 0
  if sparse_embedding is None:
    sparse_embedding = not cfg.tie_embeddings and not dense_only
  if sparse_embedding and cfg.tie_embeddings:
    raise ValueError("sparse_embedding=True needs an untied embedding (tie_embeddings=False)")
  if sparse_embedding and dense_only:
    raise ValueError("sparse_embedding=True needs optimizer='sgd' and weight_decay=0 (Adam and "
                     "weight decay update every embedding row)")
  wd = cfg.weight_decay

  def clip_scale(sq_norm):
    return jnp.minimum(1.0, cfg.max_grad_norm / (jnp.sqrt(sq_norm) + 1e-6))

  def dense_step(state, ops, carry, inputs, targets, lr, key):
    params = state_params(state, cfg)

    def loss_fn(p):
      logits, new_carry = apply(p, ops, carry, inputs, cell, cfg, key)
      nll = _nll_sum(logits, targets)
      return nll / inputs.shape[0], (new_carry, nll)

    grads, (new_carry, nll) = jax.grad(loss_fn, has_aux=True)(params)
    scale = clip_scale(optax.tree.norm(grads, squared=True))
    if cfg.optimizer == "sgd":
      if wd > 0:
        state = jax.tree.map(lambda p, g: p - lr * (scale * g + wd * p), params, grads)
      else:  # the update of before weight decay existed, bit for bit
        state = jax.tree.map(lambda p, g: p - lr * scale * g, params, grads)
    else:
      clipped = jax.tree.map(lambda g: scale * g, grads)
      updates, opt_state = optim.lm_adam().update(clipped, state.opt_state)
      state = AdamState(jax.tree.map(lambda p, u: p - lr * (u + wd * p), params, updates),
                        opt_state)
    return state, jax.tree.map(jax.lax.stop_gradient, new_carry), nll

  def sparse_step(params, ops, carry, inputs, targets, lr, key):
    embed = params["embed"]
    ids = inputs.T                                              # T x B
    mask = _embed_mask(_keys(key, cfg)[-1], embed.shape[0], cfg)
    row_mask = None if mask is None else mask[ids]              # T x B x 1
    rows = embed[ids] if row_mask is None else embed[ids] * row_mask
    rest = {k: v for k, v in params.items() if k != "embed"}

    def loss_fn(p, x):
      logits, new_carry = apply({**p, "embed": embed}, ops, carry, inputs, cell, cfg, key,
                                embedded=x)
      nll = _nll_sum(logits, targets)
      return nll / inputs.shape[0], (new_carry, nll)

    (g_rest, g_rows), (new_carry, nll) = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(rest, rows)
    if row_mask is not None:
      g_rows = g_rows * row_mask
    # One row per distinct word: the dense gradient's nonzero rows (padding ids are out of range).
    flat_ids = ids.reshape(-1)
    uniq, inverse = jnp.unique(flat_ids, size=flat_ids.shape[0], fill_value=embed.shape[0],
                               return_inverse=True)
    g_uniq = jax.ops.segment_sum(g_rows.reshape(flat_ids.shape[0], -1), inverse.reshape(-1),
                                 num_segments=flat_ids.shape[0])
    sq_norm = optax.tree.norm(g_rest, squared=True) + jnp.sum(g_uniq * g_uniq)
    scale = clip_scale(sq_norm)
    new = jax.tree.map(lambda p, g: p - lr * scale * g, rest, g_rest)
    new["embed"] = embed.at[uniq].add(-lr * scale * g_uniq, mode="drop")
    return new, jax.tree.map(jax.lax.stop_gradient, new_carry), nll

  return sparse_step if sparse_embedding else dense_step


def make_eval_step(cell: Cell, cfg: LMConfig):
  """(params, ops, carry, inputs, targets) -> (carry, nll_sum); no dropout."""

  def eval_step(params, ops, carry, inputs, targets):
    logits, carry = apply(params, ops, carry, inputs, cell, cfg, None)
    return carry, _nll_sum(logits, targets)

  return eval_step


@functools.lru_cache(maxsize=32)
def _jitted(cell: Cell, cfg: LMConfig):
  return (jax.jit(make_train_step(cell, cfg), donate_argnums=(0, 2)),
          jax.jit(make_eval_step(cell, cfg), donate_argnums=(2,)))


def perplexity(params, ops, ids: np.ndarray, cell: Cell, cfg: LMConfig, batch_size: int,
               bptt: int = 0, max_tokens: int = 0) -> float:
  """exp(mean NLL) over ``ids`` read as ``batch_size`` contiguous streams, state carried."""
  if max_tokens:
    ids = ids[:max_tokens + 1]
  _, eval_step = _jitted(cell, cfg)
  bptt = bptt or (cfg.bptt if batch_size > 1 else 400)
  nlls, count = trainer.lm_nll(eval_step, params, ops, init_carry(cell, cfg, batch_size),
                               ptb.batchify(ids, batch_size), bptt)
  return math.exp(sum(float(nll) for nll in nlls) / count)


class LMResult(NamedTuple):
  params: Any
  history: list  # per epoch: dict(epoch, lr, train_ppl, valid_ppl, tokens_per_sec, seconds)
  valid_ppl: float
  test_ppl: float | None


class Progress(NamedTuple):
  """Where an LM's training stands after an epoch: what a checkpoint holds to resume it exactly."""
  epoch: int       # epochs done
  state: Any       # the train state (:func:`init_train_state`'s structure)
  step: int        # training steps taken (the dropout key of step k is fold_in(drop_key, k))
  history: list    # per epoch done: dict(epoch, lr, train_ppl, valid_ppl, tokens_per_sec, seconds)


def initial_progress(corpus: ptb.Corpus, cell: Cell, cfg: LMConfig, key: jax.Array) -> Progress:
  """Epoch 0: the initial train state of :func:`train` with ``key``."""
  init_key, _ = jax.random.split(key)
  return Progress(0, init_train_state(init_params(init_key, len(corpus.vocab), cell, cfg), cfg),
                  0, [])


def train(corpus: ptb.Corpus, cell: Cell, cfg: LMConfig, key: jax.Array, *, ops=None,
          evaluate_test: bool = True, log_fn: Callable[[str], None] | None = None,
          start: Progress | None = None,
          on_epoch: Callable[[Progress], None] | None = None) -> LMResult:
  """Trains an LM on ``corpus.train`` and reports validation (and test) perplexity per epoch.

  ``start``: go on from this point (a checkpoint of the same call); ``on_epoch(progress)`` is
  called after each epoch (to checkpoint it). A run stopped after any epoch and resumed from its
  progress ends with the numbers of an uninterrupted one.

  Returns:
    LMResult; ``valid_ppl`` is the best validation perplexity over the epochs, ``test_ppl`` is the
    test perplexity of the final parameters (Zaremba et al. report the final model).
  """
  ops = jnp.zeros((0,), jnp.int32) if ops is None else jnp.asarray(ops)
  _, drop_key = jax.random.split(key)
  done, state, step, history = start or initial_progress(corpus, cell, cfg, key)
  history = list(history)
  params = state_params(state, cfg)
  train_step, _ = _jitted(cell, cfg)
  train_ids = corpus.train[:cfg.max_train_tokens + 1] if cfg.max_train_tokens else corpus.train
  stream = ptb.batchify(train_ids, cfg.batch_size)
  for epoch in range(done + 1, cfg.epochs + 1):
    lr = optim.lm_learning_rate(cfg, epoch)
    t0 = time.time()
    state, nlls, step = trainer.lm_epoch(train_step, state, ops,
                                         init_carry(cell, cfg, cfg.batch_size), stream, cfg, lr,
                                         drop_key, step)
    params = state_params(state, cfg)
    count = len(nlls) * cfg.batch_size * cfg.bptt
    total = float(jnp.sum(jnp.stack(nlls)))
    seconds = time.time() - t0
    trainer.check_finite(total / count, epoch)
    train_ppl = math.exp(total / count)
    valid_ppl = perplexity(params, ops, corpus.valid, cell, cfg, cfg.eval_batch_size,
                           max_tokens=cfg.max_eval_tokens)
    history.append({"epoch": epoch, "lr": lr, "train_ppl": train_ppl, "valid_ppl": valid_ppl,
                    "tokens_per_sec": count / seconds, "seconds": seconds})
    if log_fn:
      log_fn(f"epoch {epoch}/{cfg.epochs} lr {lr:.4g} train ppl {train_ppl:.2f} "
             f"valid ppl {valid_ppl:.2f} | {count / seconds:.0f} tokens/s | {seconds:.0f}s")
    if on_epoch:
      on_epoch(Progress(epoch, state, step, list(history)))
  test_ppl = (perplexity(params, ops, corpus.test, cell, cfg, cfg.test_batch_size)
              if evaluate_test else None)
  return LMResult(params, history, min(h["valid_ppl"] for h in history), test_ppl)
