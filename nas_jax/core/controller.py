"""The LSTM controller of Zoph & Le (2017), as pure functions over a dict of arrays.

A two-layer LSTM (35 units, weights U(-0.08, 0.08)) walks the search space's *plan*, one step per
decision. A choice step applies that decision type's softmax head to the top hidden state, samples a
token and feeds its embedding to the next step. An anchor step at layer ``i`` (the paper's skip
connections) emits one Bernoulli per previous anchor ``j < i``::

    P(layer j feeds layer i) = sigmoid(v^T tanh(W_prev h_j + W_curr h_i))

and feeds the next step the average of the chosen anchors' hidden states (plus a learned anchor
embedding), so later decisions see which skips were taken.

``sample`` and ``log_prob`` share one ``lax.scan`` step: sampling draws the tokens, ``log_prob``
re-scores given tokens by teacher forcing, which is what the REINFORCE surrogate differentiates.
Both handle ``m`` architectures at once (the controller batch). The plan enters the compiled scan
as arrays padded to a bucket (32 steps, 8 anchors), so a search whose depth grows (3, 4, 5 layers
...) compiles ``sample`` and the REINFORCE update once per bucket instead of once per depth; the
padding steps are inactive (they contribute nothing) and PRNG keys are split per step, so the
tokens of a plan do not depend on its padding.

Gated steps (``base.gated``: a depth or any count chosen by an earlier choice step) keep the plan
at its fixed length and the controller one scan: the scan carries the tokens drawn so far and
computes each sample's mask inside the step, from its (sampled or forced) gate token, so sampling
and re-scoring agree. A step masked out for a sample is skipped for that sample: it adds 0 to the
log-probability and the entropy, leaves the LSTM state, the next input and the anchors as they were
(so later steps see what a plan without that step would give them, and its tokens cannot change
them), and its tokens come out as 0. Anchor bits that point at a skipped layer are masked too.
Plans without gates trace the same computation as before gating existed.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nas_jax.spaces import base
from nas_jax.spaces.base import CHOICE, Decision, Step

Params = dict


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
  """Static controller hyperparameters (hashable: used as a jit static argument).

  Attributes:
    hidden_size: LSTM units per layer (paper: 35); also the token-embedding size.
    num_lstm_layers: stacked LSTM layers (paper: 2).
    init_scale: weights are drawn from U(-init_scale, init_scale) (paper: 0.08).
    temperature: if set, logits are divided by it (off by default).
    tanh_constant: if set, logits become ``c * tanh(logits)`` (off by default).
  Both options apply to the choice logits and to the skip-connection (anchor) logits alike.
  """
  hidden_size: int = 35
  num_lstm_layers: int = 2
  init_scale: float = 0.08
  temperature: float | None = None
  tanh_constant: float | None = None


def _max_choices(decisions: Sequence[Decision]) -> int:
  return max(d.num_choices for d in decisions)


def init(key: jax.Array, decisions: Sequence[Decision], cfg: ControllerConfig = ControllerConfig()
         ) -> Params:
  """Controller parameters, all drawn from U(-init_scale, init_scale).

  Heads and embeddings of all decision types are stacked and padded to the largest choice count
  (padding is masked out of every softmax, so it never receives gradient).
  """
  h, d, c = cfg.hidden_size, len(decisions), _max_choices(decisions)
  shapes = {
      "lstm": [{"w": (2 * h, 4 * h), "b": (4 * h,)} for _ in range(cfg.num_lstm_layers)],
      "go": (h,),             # input of the first step
      "anchor_embed": (h,),   # added to the input that follows an anchor step
      "embed_DxCxH": (d, c, h),
      "head_w_DxHxC": (d, h, c),
      "head_b_DxC": (d, c),
      "w_prev_HxH": (h, h),
      "w_curr_HxH": (h, h),
      "v_H": (h,),
  }
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
  keys = jax.random.split(key, len(leaves))
  arrays = [jax.random.uniform(k, s, jnp.float32, -cfg.init_scale, cfg.init_scale)
            for k, s in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, arrays)


def _lstm(layers, x_MxH, carry):
  """Stacked LSTM cell. carry: tuple of (c_MxH, h_MxH) per layer."""
  new_carry = []
  for layer, (c, h) in zip(layers, carry):
    gates = jnp.concatenate([x_MxH, h], axis=-1) @ layer["w"] + layer["b"]
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    new_carry.append((c, h))
    x_MxH = h
  return x_MxH, tuple(new_carry)


def _shape_logits(logits, cfg: ControllerConfig):
  if cfg.temperature is not None:
    logits = logits / cfg.temperature
  if cfg.tanh_constant is not None:
    logits = cfg.tanh_constant * jnp.tanh(logits)
  return logits


STEP_BUCKET, ANCHOR_BUCKET = 32, 8   # plans are padded to multiples of these


def _round_up(n: int, bucket: int) -> int:
  return -(-max(n, 1) // bucket) * bucket


class _PlanArrays:
  """Static per-step arrays of a plan, and the flat-token <-> per-step index maps."""

  def __init__(self, plan: Sequence[Step], decisions: Sequence[Decision]):
    self.num_steps = len(plan)
    self.num_anchors = _round_up(sum(1 for s in plan if s.kind != CHOICE), ANCHOR_BUCKET)
    self.padded_steps = _round_up(self.num_steps, STEP_BUCKET)
    self.is_choice = np.array([s.kind == CHOICE for s in plan])
    self.decision = np.array([max(s.decision, 0) for s in plan], np.int32)
    anchor_slot, n = [], 0
    for s in plan:  # anchors are numbered in plan order; layer i's anchor is slot i
      if s.kind != CHOICE and s.layer != n:
        raise ValueError(f"plan: anchor step {n} is at layer {s.layer}; the k-th anchor step of a "
                         f"plan must be at layer k (every layer has one anchor, in order)")
      anchor_slot.append(n if s.kind != CHOICE else 0)
      n += s.kind != CHOICE
    self.anchor_slot = np.array(anchor_slot, np.int32)
    self.num_bits = np.array([0 if s.kind == CHOICE else s.layer for s in plan], np.int32)
    # flat position p -> (step, bit) where bit = -1 means "the choice token"
    step_of, bit_of = [], []
    for si, s in enumerate(plan):
      if s.kind == CHOICE:
        step_of.append(si), bit_of.append(-1)
      else:
        for j in range(s.layer):
          step_of.append(si), bit_of.append(j)
    self.step_of = np.array(step_of, np.int32)
    self.bit_of = np.array(bit_of, np.int32)
    pad = self.padded_steps - self.num_steps
    # The scan's per-step inputs; padding steps are inactive choice steps.
    self.xs = {"is_choice": np.pad(self.is_choice, (0, pad), constant_values=True),
               "decision": np.pad(self.decision, (0, pad)),
               "anchor_slot": np.pad(self.anchor_slot, (0, pad)),
               "num_bits": np.pad(self.num_bits, (0, pad)),
               "active": np.arange(self.padded_steps) < self.num_steps}
    if base.is_gated(plan):   # only gated plans carry these, so the others trace exactly as before
      base.check_gates(plan)
      self.xs["gates"] = {
          "gate": np.pad(np.array([s.gate for s in plan], np.int32), (0, pad), constant_values=-1),
          "gate_min": np.pad(np.array([s.gate_min for s in plan], np.int32), (0, pad)),
          "index": np.arange(self.padded_steps, dtype=np.int32)}

  def to_flat(self, tok_MxS, bits_MxSxL):
    """Flat tokens from the scan's per-step outputs (numpy)."""
    tok_MxS, bits_MxSxL = np.asarray(tok_MxS), np.asarray(bits_MxSxL)
    if self.step_of.size == 0:
      return np.zeros((tok_MxS.shape[0], 0), np.int32)
    from_bits = bits_MxSxL[:, self.step_of, np.maximum(self.bit_of, 0)]
    return np.where(self.bit_of < 0, tok_MxS[:, self.step_of], from_bits).astype(np.int32)

  def from_flat(self, tokens_MxT):
    """Per-step (padded) token and anchor-bit arrays from flat tokens (numpy for concrete
    tokens, so a new plan costs no eager op compilations; traceable otherwise)."""
    m = tokens_MxT.shape[0]
    ch = self.bit_of < 0
    if not isinstance(tokens_MxT, jax.core.Tracer):
      tokens_MxT = np.asarray(tokens_MxT, np.int32)
      tok = np.zeros((m, self.padded_steps), np.int32)
      bits = np.zeros((m, self.padded_steps, self.num_anchors), np.int32)
      tok[:, self.step_of[ch]] = tokens_MxT[:, ch]
      bits[:, self.step_of[~ch], self.bit_of[~ch]] = tokens_MxT[:, ~ch]
      return tok, bits
    tokens_MxT = tokens_MxT.astype(jnp.int32)
    tok = jnp.zeros((m, self.padded_steps), jnp.int32)
    bits = jnp.zeros((m, self.padded_steps, self.num_anchors), jnp.int32)
    tok = tok.at[:, self.step_of[ch]].set(tokens_MxT[:, ch])
    bits = bits.at[:, self.step_of[~ch], self.bit_of[~ch]].set(tokens_MxT[:, ~ch])
    return tok, bits


@functools.lru_cache(maxsize=64)
def _plan_arrays(plan: tuple[Step, ...], decisions: tuple[Decision, ...]) -> _PlanArrays:
  return _PlanArrays(plan, decisions)


def _choice_step(params, out, d, mask_DxC, cfg, key, forced_tok):
  """A choice step: the softmax head of decision ``d`` over its valid choices. Samples with
  ``key``, or scores ``forced_tok`` (key None). Returns (token, log-prob, entropy, next input)."""
  logits = _shape_logits(out @ params["head_w_DxHxC"][d] + params["head_b_DxC"][d], cfg)
  logits = jnp.where(mask_DxC[d], logits, -1e9)
  logp_all = jax.nn.log_softmax(logits)
  tok = jax.random.categorical(key, logits) if key is not None else forced_tok
  logp = jnp.take_along_axis(logp_all, tok[:, None], axis=1)[:, 0]
  ent = -jnp.sum(jnp.where(mask_DxC[d], jnp.exp(logp_all) * logp_all, 0.0), axis=-1)
  return tok, logp, ent, params["embed_DxCxH"][d][tok]


def _anchor_step(params, out, anchors_h, anchors_prev, valid, cfg, key, forced_bits):
  """An anchor step: one sigmoid per earlier anchor (``valid`` ones), the paper's attention.
  Samples with ``key``, or scores ``forced_bits`` (key None). Returns (bits, log-prob, entropy,
  next input: the anchor embedding plus the mean of the chosen anchors' hidden states)."""
  attn = jnp.tanh(anchors_prev + (out @ params["w_curr_HxH"])[:, None, :]) @ params["v_H"]
  attn = _shape_logits(attn, cfg)
  # Drawn anchor-major, (L, m): with partitionable threefry the draws of anchors j < L do not
  # depend on how far the anchor axis is padded.
  bits = (jax.random.bernoulli(key, jax.nn.sigmoid(attn).T).T.astype(jnp.int32)
          if key is not None else forced_bits)
  bits = jnp.where(valid, bits, 0)
  bit_logp = jnp.where(bits == 1, jax.nn.log_sigmoid(attn), jax.nn.log_sigmoid(-attn))
  logp = jnp.sum(jnp.where(valid, bit_logp, 0.0), axis=-1)
  p = jax.nn.sigmoid(attn)
  bern_ent = -(p * jax.nn.log_sigmoid(attn) + (1 - p) * jax.nn.log_sigmoid(-attn))
  ent = jnp.sum(jnp.where(valid, bern_ent, 0.0), axis=-1)
  chosen = jnp.einsum("ml,mlh->mh", bits.astype(jnp.float32), anchors_h)
  return bits, logp, ent, params["anchor_embed"] + chosen / (1.0 + jnp.sum(bits, -1, keepdims=True))


def _run(params: Params, xs: dict, decisions: Sequence[Decision], cfg: ControllerConfig, m: int,
         n_anchor: int, key, forced):
  """Walks a (padded) plan for m architectures; samples (forced=None) or re-scores forced tokens.

  ``xs`` holds the plan's per-step arrays (``_PlanArrays.xs``, traced). Returns (tok_MxS,
  bits_MxSxL, log_prob_M, entropy_M) over the padded steps; inactive steps give 0 and 0.
  With ``xs["gates"]`` (a gated plan) the carry also holds each sample's tokens and active flags
  so far (``tok_MxS``, ``on_MxS``) and which anchors it has written (``anchor_on_MxL``).
  """
  h_size = cfg.hidden_size
  num_steps = xs["active"].shape[0]
  gated = "gates" in xs
  zeros = jnp.zeros((m, h_size))
  carry0 = (
      jnp.broadcast_to(params["go"], (m, h_size)),                      # next input
      tuple((zeros, zeros) for _ in range(cfg.num_lstm_layers)),       # LSTM state
      jnp.zeros((m, n_anchor, h_size)),                                # anchor hidden states h_j
      jnp.zeros((m, n_anchor, h_size)),                                # W_prev h_j
      (jnp.zeros((m, num_steps), jnp.int32), jnp.zeros((m, num_steps), bool),
       jnp.zeros((m, n_anchor), bool)) if gated else (),                # gate state
  )
  sampling = forced is None
  # split(key, n)[i] does not depend on n: a plan's keys are the same at any padding.
  keys = (jax.random.split(key, num_steps) if sampling
          else jnp.zeros((num_steps, 2), jnp.uint32))
  if forced is None:
    forced = (jnp.zeros((m, num_steps), jnp.int32),
              jnp.zeros((m, num_steps, n_anchor), jnp.int32))
  scan_xs = (xs["is_choice"], xs["decision"], xs["anchor_slot"], xs["num_bits"], xs["active"],
             keys, forced[0].T, jnp.swapaxes(forced[1], 0, 1), xs.get("gates", {}))
  mask_DxC = jnp.asarray(np.arange(_max_choices(decisions)) < np.array(
      [[dec.num_choices] for dec in decisions]))   # is c a valid choice of decision d

  def step(carry, x):
    inp, lstm_state, anchors_h, anchors_prev, gate_state = carry
    is_choice, d, slot, nbits, active, k, f_tok, f_bits, g = x
    if gated:   # this step is on for a sample where its gate step is on and its token >= gate_min
      tok_so_far, on_so_far, anchor_on = gate_state
      gate = jnp.maximum(g["gate"], 0)
      gate_open = on_so_far[:, gate] & (tok_so_far[:, gate] >= g["gate_min"])
      on = active & ((g["gate"] < 0) | gate_open)
    out, new_lstm_state = _lstm(params["lstm"], inp, lstm_state)
    k_choice, k_anchor = (jax.random.split(k) if sampling else (None, None))

    tok, choice_logp, choice_ent, choice_inp = _choice_step(
        params, out, d, mask_DxC, cfg, k_choice if sampling else None, f_tok)
    valid = jnp.arange(n_anchor) < nbits
    if gated:   # no bits towards the anchors of skipped layers
      valid = valid & anchor_on
    bits, anchor_logp, anchor_ent, anchor_inp = _anchor_step(
        params, out, anchors_h, anchors_prev, valid, cfg, k_anchor if sampling else None, f_bits)
    new_anchors_h = anchors_h.at[:, slot].set(out)
    new_anchors_prev = anchors_prev.at[:, slot].set(out @ params["w_prev_HxH"])

    pick = lambda a, b: jnp.where(is_choice, a, b)
    new_carry = (pick(choice_inp, anchor_inp), new_lstm_state,
                 pick(anchors_h, new_anchors_h), pick(anchors_prev, new_anchors_prev))
    ys = (pick(tok, 0), pick(jnp.zeros_like(bits), bits),
          jnp.where(active, pick(choice_logp, anchor_logp), 0.0),
          jnp.where(active, pick(choice_ent, anchor_ent), 0.0))
    if not gated:
      return new_carry + ((),), ys
    # A masked step is skipped: the carry stays as it was, its outputs are 0.
    keep = lambda new, old: jnp.where(on.reshape(on.shape + (1,) * (new.ndim - 1)), new, old)
    new_carry = jax.tree.map(keep, new_carry, (inp, lstm_state, anchors_h, anchors_prev))
    gate_state = (tok_so_far.at[:, g["index"]].set(jnp.where(on & is_choice, tok, 0)),
                  on_so_far.at[:, g["index"]].set(on),
                  jnp.where(is_choice, anchor_on, anchor_on.at[:, slot].set(on)))
    ys = (jnp.where(on, ys[0], 0), jnp.where(on[:, None], ys[1], 0), jnp.where(on, ys[2], 0.0),
          jnp.where(on, ys[3], 0.0))
    return new_carry + (gate_state,), ys

  _, (tok_SxM, bits_SxMxL, logp_SxM, ent_SxM) = jax.lax.scan(step, carry0, scan_xs)
  return (tok_SxM.T, jnp.swapaxes(bits_SxMxL, 0, 1), logp_SxM.sum(0), ent_SxM.sum(0))


@functools.partial(jax.jit, static_argnames=("decisions", "cfg", "m", "n_anchor"))
def _sample_padded(params, key, xs, *, decisions, cfg, m, n_anchor):
  return _run(params, xs, decisions, cfg, m, n_anchor, key, None)


def sample(params: Params, key: jax.Array, *, plan: tuple[Step, ...],
           decisions: tuple[Decision, ...], cfg: ControllerConfig = ControllerConfig(), m: int = 1):
  """Samples m architectures.

  Args:
    params: controller parameters from :func:`init`.
    key: PRNG key.
    plan: the search space's plan (static).
    decisions: the search space's decision types (static).
    cfg: controller config (static).
    m: number of architectures (static).

  Returns:
    (tokens_MxT int32, log_prob_M, entropy_M): flat tokens as laid out in
    ``search_spaces.base``, the log-probability sum_t log p(a_t | a_<t) of each, and the sum over
    steps of each step's entropy; both sums over the sample's active steps only (a gated step,
    ``base.gated``, masked out by its gate token adds nothing, and its tokens are 0).

  Compiled once per plan bucket (not per plan); not itself traceable (the flat tokens are gathered
  on the host).
  """
  pa = _plan_arrays(tuple(plan), tuple(decisions))
  tok, bits, logp, ent = _sample_padded(params, key, pa.xs, decisions=tuple(decisions), cfg=cfg,
                                        m=m, n_anchor=pa.num_anchors)
  return jnp.asarray(pa.to_flat(tok, bits)), logp, ent


def log_prob(params: Params, tokens_MxT: jax.Array, *, plan: tuple[Step, ...],
             decisions: tuple[Decision, ...], cfg: ControllerConfig = ControllerConfig()):
  """Re-scores given tokens by teacher forcing; differentiable in ``params``.

  Returns:
    (log_prob_M, entropy_M) with log_prob_M[k] = sum_t log p(a_t | a_<t) of architecture k, the
    sums over its active steps (the tokens of masked steps are ignored: any value scores the same).
  """
  pa = _plan_arrays(tuple(plan), tuple(decisions))
  forced = pa.from_flat(tokens_MxT)
  return log_prob_padded(params, forced, pa.xs, decisions=decisions, cfg=cfg)


def log_prob_padded(params: Params, forced, xs: dict, *, decisions: tuple[Decision, ...],
                    cfg: ControllerConfig = ControllerConfig()):
  """:func:`log_prob` of per-step tokens ``forced = (tok_MxS, bits_MxSxL)`` over a padded plan
  ``xs`` (``_PlanArrays.from_flat`` and ``.xs``): traced arrays, so one compilation serves every
  plan of a bucket."""
  _, _, logp, ent = _run(params, xs, decisions, cfg, forced[0].shape[0], forced[1].shape[2],
                         None, forced)
  return logp, ent


def plan_inputs(tokens_MxT, plan: tuple[Step, ...], decisions: tuple[Decision, ...]):
  """(forced, xs) for :func:`log_prob_padded`: the padded per-step tokens and plan arrays."""
  pa = _plan_arrays(tuple(plan), tuple(decisions))
  return pa.from_flat(tokens_MxT), pa.xs
