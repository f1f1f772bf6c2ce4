"""Weight-sharing recurrent cells (ENAS, Pham et al. 2018): one language model, every cell an array.

A base-B cell of :mod:`nas_jax.spaces.rnn_cell` has no weights but its leaf projections ``W_i x_t``
and ``U_i h_(t-1) + b_i``: the combinations and activations are parameter-free. The language model
of :mod:`nas_jax.training.lm` with the searched cell (``lm_cells.searched_lm_cell``), i.e. one
embedding, per layer one input kernel (I, B*H), recurrent kernel (H, B*H) and bias, and one
softmax, therefore holds the weights of *every* cell of the space: its parameters are exactly
the exact child's (``lm.init_params``), and a cell is its ``ops`` array (``space.ops(arch)``),
a traced value. The m children of a controller step run in one program, ``jax.vmap`` over their
ops arrays (and states) with the shared weights broadcast (``in_axes=None``).

Training (:func:`programs`' ``train_step``): one SGD step (``config.shared``'s optimiser,
:func:`nas_jax.training.optim.shared_optimizer`) on one BPTT window of the training stream for
N freshly sampled cells, the window's streams split among them (cell n runs its B/N streams;
ENAS: N = 1), the loss the per-token NLL (ENAS's and AWD-LSTM's scale, so ENAS's learning rate 20
and clipping at 0.25 apply; ``lm.py`` sums over time, Zaremba et al.'s); with several devices
each holds N/d cells and their streams, the gradients averaged across devices. Hidden state:
carried from window to window as ENAS does (reset to zero at the start of each pass over the
training text), one state per stream; the state a window hands on came from another cell, as in
ENAS. A step whose loss or gradient is not finite
(a cell of ``mul``/``relu`` nodes can overflow) changes no weight, and a slot whose state is not
finite hands on a zero state: one bad cell never poisons the shared weights.

Scoring (``eval_step``): the NLL sums of M cells on one window, state in and out. A controller
step's validation minibatch is one window (``lm_child.bptt`` steps of ``shared.eval_batch_size``
streams) starting from a zero state; the derive scores a cell on the whole fixed validation
slice (``lm_child.max_eval_tokens``), state carried, as the exact cell search scores a child.
Reward: ``c / ppl^2 = c exp(-2 NLL)`` (``lm_child.reward_constant``), the exact cell search's
(``cell_children.evaluate_cells``); a cell whose NLL is not finite fails with reward 0.
There is no BatchNorm in the LM, so train and eval mode differ only by dropout.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nas_jax.errors import ConfigError
from nas_jax.spaces import base, rnn_cell
from nas_jax.training import lm, lm_cells, optim, ptb, shared as shared_lib, trainer


def cell(space: rnn_cell.RNNCellSpace, cfg: lm.LMConfig) -> lm.Cell:
  """The LM cell of every architecture of ``space`` (the exact child's)."""
  return lm_cells.searched_lm_cell(space, cfg.init_scale)


def init(space: rnn_cell.RNNCellSpace, cfg: lm.LMConfig, vocab_size: int, key: jax.Array) -> dict:
  """The shared parameters: the exact child LM's (``lm.init_params``)."""
  return lm.init_params(key, vocab_size, cell(space, cfg), cfg)


def encode(space: rnn_cell.RNNCellSpace, archs: Sequence[rnn_cell.CellArch]) -> np.ndarray:
  """ops_MxO (int32) of ``archs``: what the programs take."""
  return np.stack([space.ops(a) for a in archs]).astype(np.int32)


def zero_carry(cfg: lm.LMConfig, m: int, batch: int):
  """The zero state of m children: per layer ``(c, h)``, each (m, batch, H)."""
  z = lambda: jnp.zeros((m, batch, cfg.hidden_size), jnp.float32)
  return tuple((z(), z()) for _ in range(cfg.num_layers))


def apply_children(params, ops_MxO, carry_M, inputs, lm_cell: lm.Cell, cfg: lm.LMConfig,
                   keys_M=None):
  """(logits_MxTxBxV, carry_M) of M cells sharing ``params`` on one window (``lm.apply``):
  ``inputs`` BxT (every cell on the same streams) or MxBxT (cell k on its own streams
  ``inputs[k]``); ``keys_M`` (one dropout key per child) or None (no dropout)."""
  x_axis = 0 if inputs.ndim == 3 else None
  if keys_M is None:
    return jax.vmap(lambda o, c, x: lm.apply(params, o, c, x, lm_cell, cfg),
                    in_axes=(0, 0, x_axis))(ops_MxO, carry_M, inputs)
  return jax.vmap(lambda o, c, x, k: lm.apply(params, o, c, x, lm_cell, cfg, k),
                  in_axes=(0, 0, x_axis, 0))(ops_MxO, carry_M, inputs, keys_M)


def _nll_sums(logits_MxTxBxV, targets):
  """NLL sum of each of M children; ``targets`` BxT (shared) or MxBxT (each child its own)."""
  return jax.vmap(lm._nll_sum, in_axes=(0, 0 if targets.ndim == 3 else None))(  # pylint: disable=protected-access
      logits_MxTxBxV, targets)


class Programs(NamedTuple):
  init: object        # (key) -> params
  train_step: object  # (params, opt_state, carry_N, ops_NxO, inputs, targets, key, step)
                      #   -> params, opt_state, carry_N, nll_N (per token), ok
  eval_step: object   # (params, ops_MxO, carry_M, inputs, targets) -> carry_M, nll_sum_M


@functools.lru_cache(maxsize=8)
def programs(space: rnn_cell.RNNCellSpace, cfg: lm.LMConfig, vocab_size: int,
             sh: shared_lib.SharedConfig, steps_per_epoch: int, total_steps: int,
             devices: tuple = ()) -> Programs:
  """The jitted train and eval programs of the shared LM (``sh``: the SharedConfig).

  ``train_step``: the window's B streams are split among the N cells (cell n runs streams
  n B/N to (n+1) B/N, its state carried on them); the loss is the mean per-token NLL. With
  several ``devices`` each holds N / len(devices) cells and their streams (``shard_map``), and
  the loss and gradients are averaged across them (``pmean``). ``eval_step`` splits its M cells
  over the devices where M divides evenly (no communication).
  """
  lm_cell, tx = cell(space, cfg), optim.shared_optimizer(sh, steps_per_epoch, total_steps)
  use_dropout = cfg.dropout > 0 or cfg.embed_dropout > 0
  several = len(devices) > 1

  def grads(params, carry_n, ops_n, x_n, y_n, *keys_n):
    def loss_fn(p):
      logits, new_carry = apply_children(p, ops_n, carry_n, x_n, lm_cell, cfg,
                                         keys_n[0] if keys_n else None)
      nll_n = _nll_sums(logits, y_n) / y_n[0].size
      return nll_n.mean(), (new_carry, nll_n)
    (loss, (new_carry, nll_n)), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    if several:   # the mean over devices; every device (and process) gets every cell's part
      loss, g = jax.lax.pmean((loss, g), "children")
      new_carry, nll_n = (jax.tree.map(lambda a: jax.lax.all_gather(a, "children", tiled=True), t)
                          for t in (new_carry, nll_n))
    return loss, g, new_carry, nll_n

  def eval_children(params, ops_MxO, carry_M, inputs, targets):
    logits, carry = apply_children(params, ops_MxO, carry_M, inputs, lm_cell, cfg)
    return carry, _nll_sums(logits, targets)

  grads = trainer.on_devices(grads, devices, "rcccc" + ("c" if use_dropout else ""), "rrrr")
  split_eval = trainer.on_devices(eval_children, devices, "rccrr", "rr", gather=True)

  def train_step(params, opt_state, carry_N, ops_NxO, inputs, targets, key, step):
    n = ops_NxO.shape[0]
    keys = ((jax.random.split(jax.random.fold_in(key, step), n),) if use_dropout else ())
    x_n, y_n = (a.reshape((n, -1) + a.shape[1:]) for a in (inputs, targets))
    loss, g, new_carry, nll_N = grads(params, carry_N, ops_NxO, x_n, y_n, *keys)
    updates, new_opt = tx.update(g, opt_state, params)
    ok = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(g))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    params, opt_state = keep(optax.apply_updates(params, updates), params), keep(new_opt, opt_state)
    new_carry = jax.lax.stop_gradient(new_carry)
    finite = functools.reduce(jnp.logical_and, [jnp.all(jnp.isfinite(a), axis=(1, 2))
                                                for a in jax.tree.leaves(new_carry)])
    new_carry = jax.tree.map(lambda a: jnp.where(finite[:, None, None], a, 0.0), new_carry)
    return params, opt_state, new_carry, nll_N, ok

  def eval_step(params, ops_MxO, carry_M, inputs, targets):
    if several and ops_MxO.shape[0] % len(devices) == 0:
      return split_eval(params, ops_MxO, carry_M, inputs, targets)
    return eval_children(params, ops_MxO, carry_M, inputs, targets)

  opts = {"xla_backend_optimization_level": 0} if sh.fast_compile else None
  return Programs(jax.jit(functools.partial(init, space, cfg, vocab_size), compiler_options=opts),
                  jax.jit(train_step, donate_argnums=(0, 1, 2), compiler_options=opts),
                  jax.jit(eval_step, donate_argnums=(2,), compiler_options=opts))


def reward(nll: float, constant: float) -> float:
  """``c / ppl^2`` with ppl = exp(``nll``), the exact cell search's reward (``cell_children``)."""
  return constant * math.exp(-2.0 * nll)


def _perplexities(nll_M: np.ndarray) -> np.ndarray:
  """exp(NLL) per child; inf where the NLL is not finite (the child failed)."""
  return np.where(np.isfinite(nll_M), np.exp(np.minimum(nll_M, 700.0)), np.inf)


def _window(stream_BxN: np.ndarray, w: int, bptt: int):
  return stream_BxN[:, w * bptt:(w + 1) * bptt], stream_BxN[:, w * bptt + 1:(w + 1) * bptt + 1]


class Executor:
  """The recurrent-cell space's executor (:class:`nas_jax.training.shared.Executor`): the shared
  LM's state, one training step, and the scores of M cells (values: validation perplexities)."""

  metric = base.PERPLEXITY

  def __init__(self, settings: shared_lib.Settings, space: rnn_cell.RNNCellSpace,
               corpus: ptb.Corpus, keys: dict):
    sh, lmc = settings.shared, settings.lm_child
    self.sh, self.space, self.cfg, self.m = sh, space, lmc.lm, settings.children_per_step
    self.reward_constant = lmc.reward_constant
    self.vocab_size = len(corpus.vocab)
    self.keys = keys
    cfg = self.cfg
    train_ids = corpus.train[:cfg.max_train_tokens + 1] if cfg.max_train_tokens else corpus.train
    val_ids = corpus.valid[:cfg.max_eval_tokens + 1] if cfg.max_eval_tokens else corpus.valid
    self.train_stream = _stream(train_ids, sh.batch_size, cfg.bptt, "max_train_tokens",
                                "shared.batch_size")
    self.val_stream = _stream(val_ids, sh.eval_batch_size, cfg.bptt, "max_eval_tokens",
                              "shared.eval_batch_size")
    self.windows = ptb.num_segments(self.train_stream, cfg.bptt)
    self.val_windows = ptb.num_segments(self.val_stream, cfg.bptt)
    self.steps_per_epoch = self.windows
    self.train_steps = sh.train_steps or self.windows
    self.place = shared_lib.Placement(shared_lib.devices(sh))
    self.devices = self.place.devices
    self.dropout_key = self.place(keys["dropout"])
    self.progs = programs(space, cfg, self.vocab_size, shared_lib.program_settings(sh),
                          self.steps_per_epoch, sh.epochs * self.train_steps, self.devices)
    self.tx = optim.shared_optimizer(sh, self.steps_per_epoch, sh.epochs * self.train_steps)
    self.param_count = lm_cells.cell_param_count(space, jax.eval_shape(   # one child's
        lambda k: init(space, cfg, self.vocab_size, k), jax.random.key(0)))
    self.num_layers = space.num_layers(0)

  def init(self) -> dict:
    params = self.progs.init(self.keys["weights"])
    return {"params": params, "opt_state": self.tx.init(params),
            "carry": self._train_carry(self.sh.children_per_batch)}

  def _train_carry(self, n: int):
    """The zero state of n training cells, each on its batch_size / n streams."""
    return self.place(zero_carry(self.cfg, n, self.sh.batch_size // n))

  def train_step(self, ws: dict, archs, g: int):
    """Global training step ``g`` on window ``g mod windows``; the state resets each pass."""
    w = g % self.windows
    carry = self._train_carry(len(archs)) if w == 0 else ws["carry"]
    ops, x, y = self.place((encode(self.space, archs), *_window(self.train_stream, w,
                                                                 self.cfg.bptt)))
    params, opt_state, carry, nll_N, ok = self.progs.train_step(
        ws["params"], ws["opt_state"], carry, ops, x, y, self.dropout_key, g)
    return {**ws, "params": params, "opt_state": opt_state, "carry": carry}, (nll_N, ok)

  def loss_fields(self, losses: list, phase: int) -> dict:
    """The step row's training fields: the median per-token NLL of the steps that updated (a few
    exploding cells would decide a mean) and the number of steps skipped (non-finite)."""
    if not losses:
      return {"train_loss": float("nan"), "train_skipped": 0}
    ok = np.array([bool(o) for _, o in losses])
    nll = np.array([float(np.mean(n)) for n, _ in losses])
    if not ok.any():
      raise FloatingPointError(f"every training step of epoch {phase} had a non-finite loss or "
                               "gradient; lower config.shared.learning_rate or set "
                               "config.shared.grad_clip")
    return {"train_loss": float(np.median(nll[ok])), "train_skipped": int((~ok).sum())}

  def score(self, ws: dict, archs, j: int) -> np.ndarray:
    """Perplexity_M of ``archs`` on controller step ``j``'s validation window (zero state)."""
    w = int(trainer.host_rng(jax.random.fold_in(self.keys["val"], j)).integers(self.val_windows))
    x, y = _window(self.val_stream, w, self.cfg.bptt)
    _, nll = self.progs.eval_step(ws["params"], *self.place((
        encode(self.space, archs), zero_carry(self.cfg, len(archs), x.shape[0]), x, y)))
    return _perplexities(np.asarray(nll, np.float64) / y.size)

  def score_all(self, ws: dict, archs) -> np.ndarray:
    """Perplexity_M of ``archs`` on the whole validation slice, state carried (the derive)."""
    carry, ops = self.place((zero_carry(self.cfg, len(archs), self.val_stream.shape[0]),
                             encode(self.space, archs)))
    total, count = 0.0, 0
    for x, y in ptb.segments(self.val_stream, self.cfg.bptt, keep_partial=True):
      carry, nll = self.progs.eval_step(ws["params"], ops, carry, *self.place((x, y)))
      total, count = total + np.asarray(nll), count + y.size
    return _perplexities(np.asarray(total, np.float64) / count)

  def reward(self, ppl: float) -> float:
    return reward(math.log(ppl), self.reward_constant)

  def error(self, ppl: float) -> str:
    return "" if np.isfinite(ppl) else (
        f"FloatingPointError: validation loss became {ppl} under the shared weights")

  def fields(self, arch, ppl: float) -> dict:
    del arch
    return {"val_ppl": float(ppl) if np.isfinite(ppl) else None, "param_count": self.param_count}


def _stream(ids: np.ndarray, rows: int, bptt: int, tokens_field: str, rows_field: str):
  """``ptb.batchify(ids, rows)``, or a ConfigError if it holds no window of ``bptt`` steps."""
  if len(ids) // rows < bptt + 1:
    raise ConfigError(
        f"config.lm_child.{tokens_field}: {len(ids)} tokens make {rows} streams "
        f"({rows_field}) shorter than one window of lm_child.bptt={bptt} steps; give more "
        f"tokens or fewer streams")
  return ptb.batchify(ids, rows)
