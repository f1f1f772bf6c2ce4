"""ENAS's recurrent-cell space (Pham et al. 2018, "Efficient Neural Architecture Search via
Parameter Sharing", Section 2.2), a second cell space beside the paper's
(:mod:`nas_jax.spaces.rnn_cell`). It is ENAS's, not Zoph & Le's: its results are never the
paper's PTB search.

A cell is a DAG of ``N`` nodes (ENAS on PTB: 12). Node 0 reads the input ``x_t`` and the previous
state ``h_(t-1)``; every later node ``l`` reads one earlier node ``j < l`` (a decision); every node
picks an activation ``f_l`` among tanh, ReLU, identity and sigmoid (a decision). Each node is a
highway layer whose weights are its own for each (node read, activation) pair, as ENAS's language
model code has them (google-research ``enas_lm``: ``w_skip`` of shape ``[functions, layer, H,
2H]`` per node)::

  node 0:  c_0 = sigmoid(x W_xc + h_(t-1) W_hc),  h_0 = c_0 * f_0(x W_xh + h_(t-1) W_hh)
                                                        + (1 - c_0) * h_(t-1)
  node l:  c_l = sigmoid(h_j W_c(l, f_l, j)),     h_l = c_l * f_l(h_j W_h(l, f_l, j))
                                                        + (1 - c_l) * h_j

and the cell's output (and next state) ``h_t`` is the average of the *loose ends*, the nodes no
other node reads (the paper's rule; ``enas_lm`` averages every node). One set of weights holds
every ``(l, f, j)``, so every cell of the space runs on the same parameters: the exact child
trains them alone, the weight-sharing search shares them between all cells (ENAS). A child uses
``N - 1`` of the matrices; its parameter count counts only those
(:meth:`ENASCellSpace.unused_params`).

Token program (``plan``): node 0's activation; then for each node ``l >= 1`` the node it reads
(decision ``prev_l``, ``l`` choices; node 1 can only read node 0 and has no token) and its
activation. The architecture enters :func:`cell_step` as the int32 ``ops`` array
``[act_0, ..., act_(N-1), prev_1, ..., prev_(N-1)]`` (activations as indices into
``rnn_cell.ACTIVATIONS``), a traced value: reads and weights are picked with one-hot sums, so m
different cells run under one ``jax.vmap``, as the paper's cells do.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nas_jax.spaces import base
from nas_jax.spaces.rnn_cell import ACTIVATIONS, _activate, _Acts, _position_table

ENAS_ACTIVATIONS = ("tanh", "relu", "identity", "sigmoid")


class ENASNode(NamedTuple):
  prev: int          # the node read (-1 for node 0: the input and the previous state)
  activation: str


class ENASCellArch(NamedTuple):
  """A decoded ENAS cell: ``nodes[l]`` for l = 0 .. N-1."""
  nodes: tuple[ENASNode, ...]

  def loose_ends(self) -> tuple[int, ...]:
    read = {n.prev for n in self.nodes}
    return tuple(l for l in range(len(self.nodes)) if l not in read)


@dataclasses.dataclass(frozen=True)
class ENASCellSpace(base.SearchSpace):
  """ENAS's recurrent-cell space; every field is a config field (``config.search_space``).

  Attributes:
    nodes: N, the nodes of the DAG (ENAS on PTB: 12; >= 2).
    activations: names from ``rnn_cell.ACTIVATIONS`` (ENAS: tanh, relu, identity, sigmoid).
  """
  nodes: int = 12
  activations: tuple[str, ...] = ENAS_ACTIVATIONS
  name: str = "enas_cell"
  data_names: ClassVar[tuple[str, ...]] = ("ptb",)

  def __post_init__(self):
    if not 2 <= self.nodes <= 64:
      raise ValueError(f"search_space.nodes: between 2 and 64, got {self.nodes}")
    bad = [n for n in self.activations if n not in ACTIVATIONS]
    if bad or not self.activations or len(set(self.activations)) != len(self.activations):
      raise ValueError(f"search_space.activations: {tuple(self.activations)} must be distinct "
                       f"names from {ACTIVATIONS}")

  @property
  def decisions(self) -> tuple[base.Decision, ...]:
    return (base.Decision("activation", len(self.activations)),) + tuple(
        base.Decision(f"prev_{l}", l) for l in range(2, self.nodes))

  def num_layers(self, num_sampled: int) -> int:
    """Constant: the nodes (no depth schedule)."""
    del num_sampled
    return self.nodes

  def plan(self, num_layers: int | None = None) -> tuple[base.Step, ...]:
    if num_layers is not None and num_layers != self.nodes:
      raise ValueError(f"ENASCellSpace.plan: num_layers must be the nodes ({self.nodes}), "
                       f"got {num_layers}")
    steps = [base.choice(0), base.choice(0)]           # node 0's and node 1's activations
    for l in range(2, self.nodes):
      steps += [base.choice(l - 1), base.choice(0)]    # decision prev_l, then the activation
    return tuple(steps)

  def size(self) -> int:
    """Exact number of cells: ``A^N (N-1)!`` (A activations; node l reads one of l nodes)."""
    return len(self.activations) ** self.nodes * math.factorial(self.nodes - 1)

  def decode(self, plan: Sequence[base.Step], tokens_T) -> ENASCellArch:
    if tuple(plan) != self.plan():
      raise ValueError("ENASCellSpace.decode: the plan is not this space's plan")
    v = base.split_tokens(plan, tokens_T)
    acts = [v[0], v[1]] + v[3::2]
    prevs = [-1, 0] + v[2::2]
    for l, (a, p) in enumerate(zip(acts, prevs)):
      if not 0 <= a < len(self.activations) or not (l == 0 or 0 <= p < l):
        raise ValueError(f"node {l}: activation {a} or read node {p} out of range")
    return ENASCellArch(tuple(ENASNode(int(p), self.activations[a]) for a, p in zip(acts, prevs)))

  def encode(self, arch: ENASCellArch) -> np.ndarray:
    """Inverse of :meth:`decode`: the flat tokens (int32) of ``arch``."""
    self._check(arch)
    toks = [self.activations.index(arch.nodes[0].activation),
            self.activations.index(arch.nodes[1].activation)]
    for node in arch.nodes[2:]:
      toks += [node.prev, self.activations.index(node.activation)]
    return np.array(toks, np.int32)

  def ops(self, arch: ENASCellArch) -> np.ndarray:
    """The int32 ``(2N - 1,)`` array :func:`cell_step` takes (see the module docstring)."""
    self._check(arch)
    acts = [ACTIVATIONS.index(n.activation) for n in arch.nodes]
    return np.array(acts + [n.prev for n in arch.nodes[1:]], np.int32)

  def unused_params(self, hidden_size: int) -> int:
    """Parameters of one layer's cell that a child does not use: of the ``(N-1) A (N-1)``
    stored matrices (:func:`init_cell`) all but the child's ``N - 1`` (subtracted from an exact
    child's count)."""
    stored = (self.nodes - 1) ** 2 * len(self.activations)
    return (stored - (self.nodes - 1)) * hidden_size * 2 * hidden_size

  def build(self, arch: ENASCellArch, num_classes: int):
    raise NotImplementedError(
        "ENASCellSpace children are language models built by the LM trainer: use "
        "nas_jax.spaces.enas_cell.init_cell / cell_step with space.ops(arch)")

  def describe(self, arch: ENASCellArch) -> str:
    parts = [f"0:{arch.nodes[0].activation}"] + [
        f"{l}:{n.activation}<{n.prev}" for l, n in enumerate(arch.nodes) if l]
    return " ".join(parts) + f" out:{','.join(map(str, arch.loose_ends()))}"

  def from_json(self, obj) -> ENASCellArch:
    """The inverse of ``base.to_json``; also takes a history row (its ``arch``)."""
    if isinstance(obj, dict) and "arch" in obj:
      obj = obj["arch"]
    try:
      arch = ENASCellArch(tuple(ENASNode(int(n["prev"]), n["activation"]) for n in obj["nodes"]))
    except (KeyError, TypeError) as e:
      raise ValueError(f"not an ENAS cell in the history's JSON form ({e!r}): {obj!r:.200}") \
          from None
    self._check(arch)
    return arch

  def _check(self, arch: ENASCellArch) -> None:
    if len(arch.nodes) != self.nodes:
      raise ValueError(f"an ENAS cell of {len(arch.nodes)} nodes; this space has {self.nodes}")


# ----------------------------------------------------------------------------------------------
# The cell as pure functions


def init_cell(key: jax.Array, input_size: int, hidden_size: int, nodes: int,
              num_activations: int = len(ENAS_ACTIVATIONS), init_scale: float | None = None,
              dtype=jnp.float32) -> dict:
  """``wx`` (I, 2H) and ``wh`` (H, 2H): node 0's gate and candidate from ``x`` and
  ``h_(t-1)``; ``w`` (N-1, A, N-1, H, 2H): ``w[l-1, a, j]`` node ``l``'s with activation ``a``
  (the position in the space's activations) reading node ``j`` (``j < l``; the rest unused).
  ``U(-s, s)`` with ``s = init_scale`` or ``1/sqrt(H)``."""
  s = init_scale if init_scale is not None else 1.0 / math.sqrt(hidden_size)
  k1, k2, k3 = jax.random.split(key, 3)
  u = lambda k, shape: jax.random.uniform(k, shape, dtype, -s, s)
  return {"wx": u(k1, (input_size, 2 * hidden_size)), "wh": u(k2, (hidden_size, 2 * hidden_size)),
          "w": u(k3, (nodes - 1, num_activations, nodes - 1, hidden_size, 2 * hidden_size))}


def project_input(params: dict, x):
  """Node 0's input projection ``x @ wx``: ``(..., I) -> (..., 2H)`` (all time steps at once)."""
  return x @ params["wx"]


def cell_step(params: dict, ops, carry, xw, h_mask=None, *,
              activations: Sequence[str] = ENAS_ACTIVATIONS):
  """One step of the cell encoded by ``ops`` (may be traced).

  Args:
    params: from :func:`init_cell` (N and A read from ``w``'s shape), or
      :func:`select_weights` of them for these ``ops``.
    ops: int32 ``(2N - 1,)`` from :meth:`ENASCellSpace.ops`.
    carry: ``(h_prev, h_prev)`` (the carry layout of the other cells: two (..., H) arrays; the
      first is not read).
    xw: ``project_input(params, x)``.
    h_mask: multiplies ``h_prev`` before its product (variational dropout), or None.
    activations: (static) the space's activations (``w``'s second axis follows their order).

  Returns:
    ``((h_t, h_t), h_t)``.
  """
  ops = jnp.asarray(ops)
  n = (params["w_picked"] if "w_picked" in params else params["w"]).shape[0] + 1
  if ops.shape != (2 * n - 1,):
    raise ValueError(f"ops must have shape ({2 * n - 1},) for {n} nodes, got {ops.shape}")
  _, h_prev = carry
  hidden = h_prev.shape[-1]
  acts = _Acts(tuple(activations))
  if "w" in params and params["w"].shape[1] != len(acts.names):
    raise ValueError(f"w holds {params['w'].shape[1]} activations, the space has "
                     f"{len(acts.names)}")
  act_ids = ops[:n]
  kind, scale, shift = (jnp.asarray(t)[act_ids] for t in (acts.kind, acts.scale, acts.shift))
  prev = ops[n:]                                               # node l >= 1 reads prev[l - 1]
  hm = h_prev if h_mask is None else h_prev * h_mask

  def highway(l, pre, h_in):
    gate = jax.nn.sigmoid(pre[..., :hidden])
    return gate * _activate(kind[l], scale[l], shift[l], acts, pre[..., hidden:]) + \
        (1.0 - gate) * h_in

  picked = params["w_picked"] if "w_picked" in params else select_weights(
      params, ops, activations)["w_picked"]
  states = [highway(0, xw + hm @ params["wh"], h_prev)]
  for l in range(1, n):
    # One-hot sums, not dynamic indexing: under vmap the read node is batched, and a batched
    # index becomes a gather (slow on CPU).
    onehot = (jnp.arange(l) == prev[l - 1]).astype(h_prev.dtype)
    h_in = sum(onehot[j] * states[j] for j in range(l))
    states.append(highway(l, h_in @ picked[l - 1], h_in))
  loose = 1.0 - jnp.any(prev[:, None] == jnp.arange(n), axis=0).astype(h_prev.dtype)
  h_new = sum(loose[l] * states[l] for l in range(n)) / jnp.sum(loose)
  return (h_new, h_new), h_new


def select_weights(params: dict, ops, activations: Sequence[str] = ENAS_ACTIVATIONS) -> dict:
  """``params`` with ``w`` replaced by ``w_picked`` (N-1, H, 2H): each node's matrix for its
  activation and the node it reads (one-hot sums: ``ops`` may be traced). :func:`cell_step` takes
  either; the language model picks once per segment (``lm.Cell.select``)."""
  ops = jnp.asarray(ops)
  w = params["w"]
  n, a = w.shape[0] + 1, w.shape[1]
  act_pos = jnp.asarray(_position_table(tuple(activations), ACTIVATIONS))[ops[:n]]
  pick = (jnp.arange(a)[None, :] == act_pos[1:, None]).astype(w.dtype)         # (N-1, A)
  read = (jnp.arange(n - 1)[None, :] == ops[n:, None]).astype(w.dtype)         # (N-1, N-1)
  out = {k: v for k, v in params.items() if k != "w"}
  out["w_picked"] = jnp.einsum("la,lj,lajhk->lhk", pick, read, w)
  return out


def cell_apply(params: dict, ops, carry, x, *, activations: Sequence[str] = ENAS_ACTIVATIONS):
  """:func:`cell_step` from the raw input ``x``."""
  return cell_step(params, ops, carry, project_input(params, x), activations=activations)
