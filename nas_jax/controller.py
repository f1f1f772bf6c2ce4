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
Both handle ``m`` architectures at once (the controller batch) and are jit-compiled per plan.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nas_jax.search_spaces.base import CHOICE, Decision, Step

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


class _PlanArrays:
  """Static per-step arrays of a plan, and the flat-token <-> per-step index maps."""

  def __init__(self, plan: Sequence[Step], decisions: Sequence[Decision]):
    self.num_steps = len(plan)
    self.num_anchors = max(1, sum(1 for s in plan if s.kind != CHOICE))
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
    # choice_mask[d, c]: is c a valid choice of decision d
    self.choice_mask_DxC = np.zeros((len(decisions), _max_choices(decisions)), bool)
    for i, dec in enumerate(decisions):
      self.choice_mask_DxC[i, :dec.num_choices] = True
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

  def to_flat(self, tok_MxS, bits_MxSxL):
    if self.step_of.size == 0:
      return jnp.zeros((tok_MxS.shape[0], 0), jnp.int32)
    from_bits = bits_MxSxL[:, self.step_of, np.maximum(self.bit_of, 0)]
    return jnp.where(self.bit_of < 0, tok_MxS[:, self.step_of], from_bits).astype(jnp.int32)

  def from_flat(self, tokens_MxT):
    m = tokens_MxT.shape[0]
    tok = jnp.zeros((m, self.num_steps), jnp.int32)
    bits = jnp.zeros((m, self.num_steps, self.num_anchors), jnp.int32)
    ch = self.bit_of < 0
    tok = tok.at[:, self.step_of[ch]].set(tokens_MxT[:, ch])
    bits = bits.at[:, self.step_of[~ch], self.bit_of[~ch]].set(tokens_MxT[:, ~ch])
    return tok, bits


def _run(params: Params, pa: _PlanArrays, cfg: ControllerConfig, m: int, key, forced):
  """Walks the plan for m architectures; samples (forced=None) or re-scores forced tokens.

  Returns (tok_MxS, bits_MxSxL, log_prob_M, entropy_M).
  """
  h_size, n_anchor = cfg.hidden_size, pa.num_anchors
  heads_w = params["head_w_DxHxC"]
  heads_b = params["head_b_DxC"]
  zeros = jnp.zeros((m, h_size))
  carry0 = (
      jnp.broadcast_to(params["go"], (m, h_size)),                      # next input
      tuple((zeros, zeros) for _ in range(cfg.num_lstm_layers)),       # LSTM state
      jnp.zeros((m, n_anchor, h_size)),                                # anchor hidden states h_j
      jnp.zeros((m, n_anchor, h_size)),                                # W_prev h_j
  )
  sampling = forced is None
  keys = (jax.random.split(key, pa.num_steps) if sampling
          else jnp.zeros((pa.num_steps, 2), jnp.uint32))
  if forced is None:
    forced = (jnp.zeros((m, pa.num_steps), jnp.int32),
              jnp.zeros((m, pa.num_steps, n_anchor), jnp.int32))
  xs = (jnp.asarray(pa.is_choice), jnp.asarray(pa.decision), jnp.asarray(pa.anchor_slot),
        jnp.asarray(pa.num_bits), keys, forced[0].T, jnp.swapaxes(forced[1], 0, 1))
  mask_DxC = jnp.asarray(pa.choice_mask_DxC)

  def step(carry, x):
    inp, lstm_state, anchors_h, anchors_prev = carry
    is_choice, d, slot, nbits, k, f_tok, f_bits = x
    out, lstm_state = _lstm(params["lstm"], inp, lstm_state)
    k_choice, k_anchor = (jax.random.split(k) if sampling else (None, None))

    # Choice step: softmax head of decision d over its valid choices.
    logits = _shape_logits(out @ heads_w[d] + heads_b[d], cfg)
    logits = jnp.where(mask_DxC[d], logits, -1e9)
    logp_all = jax.nn.log_softmax(logits)
    tok = (jax.random.categorical(k_choice, logits) if sampling else f_tok)
    choice_logp = jnp.take_along_axis(logp_all, tok[:, None], axis=1)[:, 0]
    choice_ent = -jnp.sum(jnp.where(mask_DxC[d], jnp.exp(logp_all) * logp_all, 0.0), axis=-1)
    choice_inp = params["embed_DxCxH"][d][tok]

    # Anchor step at layer `slot`: one sigmoid per earlier anchor j < slot.
    attn = jnp.tanh(anchors_prev + (out @ params["w_curr_HxH"])[:, None, :]) @ params["v_H"]
    attn = _shape_logits(attn, cfg)
    valid = jnp.arange(n_anchor) < nbits
    bits = (jax.random.bernoulli(k_anchor, jax.nn.sigmoid(attn)).astype(jnp.int32)
            if sampling else f_bits)
    bits = jnp.where(valid, bits, 0)
    bit_logp = jnp.where(bits == 1, jax.nn.log_sigmoid(attn), jax.nn.log_sigmoid(-attn))
    anchor_logp = jnp.sum(jnp.where(valid, bit_logp, 0.0), axis=-1)
    p = jax.nn.sigmoid(attn)
    bern_ent = -(p * jax.nn.log_sigmoid(attn) + (1 - p) * jax.nn.log_sigmoid(-attn))
    anchor_ent = jnp.sum(jnp.where(valid, bern_ent, 0.0), axis=-1)
    chosen = jnp.einsum("ml,mlh->mh", bits.astype(jnp.float32), anchors_h)
    anchor_inp = params["anchor_embed"] + chosen / (1.0 + jnp.sum(bits, -1, keepdims=True))
    new_anchors_h = anchors_h.at[:, slot].set(out)
    new_anchors_prev = anchors_prev.at[:, slot].set(out @ params["w_prev_HxH"])

    pick = lambda a, b: jnp.where(is_choice, a, b)
    carry = (pick(choice_inp, anchor_inp), lstm_state,
             pick(anchors_h, new_anchors_h), pick(anchors_prev, new_anchors_prev))
    ys = (pick(tok, 0), pick(jnp.zeros_like(bits), bits),
          pick(choice_logp, anchor_logp), pick(choice_ent, anchor_ent))
    return carry, ys

  _, (tok_SxM, bits_SxMxL, logp_SxM, ent_SxM) = jax.lax.scan(step, carry0, xs)
  return (tok_SxM.T, jnp.swapaxes(bits_SxMxL, 0, 1), logp_SxM.sum(0), ent_SxM.sum(0))


@functools.partial(jax.jit, static_argnames=("plan", "decisions", "cfg", "m"))
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
    steps of each step's entropy.
  """
  pa = _PlanArrays(plan, decisions)
  tok, bits, logp, ent = _run(params, pa, cfg, m, key, None)
  return pa.to_flat(tok, bits), logp, ent


def log_prob(params: Params, tokens_MxT: jax.Array, *, plan: tuple[Step, ...],
             decisions: tuple[Decision, ...], cfg: ControllerConfig = ControllerConfig()):
  """Re-scores given tokens by teacher forcing; differentiable in ``params``.

  Returns:
    (log_prob_M, entropy_M) with log_prob_M[k] = sum_t log p(a_t | a_<t) of architecture k.
  """
  pa = _PlanArrays(plan, decisions)
  tokens_MxT = jnp.asarray(tokens_MxT, jnp.int32)
  forced = pa.from_flat(tokens_MxT)
  _, _, logp, ent = _run(params, pa, cfg, tokens_MxT.shape[0], None, forced)
  return logp, ent
