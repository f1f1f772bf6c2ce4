"""The recurrent-cell search space of Zoph & Le (2017), Section 3.4 (Penn Treebank).

The cell is a full binary tree with ``B`` leaves (the *base*, paper: 8). Node numbering: leaves
``0..B-1``, then each internal level in order, the root last (``2B-1`` nodes); node ``k`` of a level
combines nodes ``2k`` and ``2k+1`` of the level below. Every node chooses

* a combination: ``add``, ``mul`` (elementwise) [, ``max`` in the paper's control experiment];
* an activation: ``identity``, ``tanh``, ``sigmoid``, ``relu`` [, ``sin``].

Leaf ``i`` combines its own projections ``W_i x_t`` and ``U_i h_(t-1) + b_i`` (block ``i`` of an
input kernel (I, B*H), a recurrent kernel (H, B*H) and an optional bias (B*H,), TF NASCell's
layout); internal nodes have no parameters. ``node_pre = comb(left, right)``,
``node_out = act(node_pre)``.

Cell inject (a combination + activation) merges ``c_(t-1)`` into one node's *activated* output:
``node_out = inj_act(inj_comb(node_out, c_(t-1)))``; this replaced value is what the parent sees.
Cell indices (two tokens): which node's output *before its activation* (``node_pre``, not affected
by the inject of that same node) becomes ``c_t``, and which node ``c_(t-1)`` is injected into.
``h_t`` is the root's output (after the inject, if the root is the inject node).

Token program (``plan``): for each node in order, combination then activation; then the inject's
combination and activation; then the ``c_t`` node and the inject node:
``2(2B-1) + 2 + 2`` tokens. Search space size: see :func:`space_size`.

The children are language models, trained by the LM trainer, which runs the cell through the pure
functions :func:`init_cell` / :func:`cell_apply` (or :func:`project_input` for all time steps at
once + :func:`cell_step` inside ``lax.scan``). The architecture enters :func:`cell_apply` as a
fixed-length int32 array (:meth:`RNNCellSpace.ops`), a *traced* value: every candidate combination
and activation is computed for every node of a tree level at once and one is picked per node with
``lax.select_n``, so ``m`` different cells run under one ``jax.vmap`` in a single compiled program.
tanh and sigmoid share one tanh evaluation (``sigmoid(v) = (1 + tanh(v/2)) / 2``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nas_jax.spaces import base

Params = dict

# Global op vocabularies: ``ops`` arrays hold indices into these (not into a space's subsets).
COMBINATIONS = ("add", "mul", "max")
ACTIVATIONS = ("identity", "tanh", "sigmoid", "relu", "sin")

_COMB_FNS = {"add": jnp.add, "mul": jnp.multiply, "max": jnp.maximum}
_ACT_FNS = {"identity": lambda v: v, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid,
            "relu": jax.nn.relu, "sin": jnp.sin}


class NodeOp(NamedTuple):
  combination: str
  activation: str


class CellArch(NamedTuple):
  """A decoded cell: ``nodes[n]`` for the 2B-1 nodes (leaves first, root last), the inject's ops,
  the node whose pre-activation becomes ``c_t`` and the node ``c_(t-1)`` is injected into."""
  nodes: tuple[NodeOp, ...]
  inject: NodeOp
  c_node: int
  inject_node: int

  @property
  def base(self) -> int:
    return (len(self.nodes) + 1) // 2


def space_size(base: int = 8, num_combinations: int = 2, num_activations: int = 4) -> int:
  """Exact number of architectures (distinct token sequences) of the space.

  Each of the ``2B-1`` nodes and the cell inject choose a combination and an activation, and the
  two cell indices each choose one of the ``2B-1`` nodes::

      size = (num_combinations * num_activations) ** (2B) * (2B - 1) ** 2

  Base 8 with {add, mul} x {identity, tanh, sigmoid, relu}: ``8**16 * 15**2 = 63,331,869,759,
  897,600 ~ 6.3e16`` (the paper: "approximately 6 x 10^16"). With max and sin: ``15**16 * 15**2``.
  """
  _check_base(base)
  n = 2 * base - 1
  return (num_combinations * num_activations) ** (n + 1) * n ** 2


def _check_base(b: int) -> None:
  if b < 2 or b & (b - 1):
    raise ValueError(f"base must be a power of two >= 2, got {b}")


def num_nodes(base: int) -> int:
  return 2 * base - 1


def ops_length(base: int) -> int:
  """Length of the ``ops`` array of a base-``base`` cell: 2 per node + inject (2) + indices (2)."""
  return 2 * num_nodes(base) + 4


def _levels(b: int) -> list[tuple[int, int]]:
  """(first node, node count) of each level, leaves first."""
  out, start, n = [], 0, b
  while n >= 1:
    out.append((start, n))
    start, n = start + n, n // 2
  return out


@dataclasses.dataclass(frozen=True)
class RNNCellSpace(base.SearchSpace):
  """The recurrent-cell space; every field is a config field (``config.search_space``).

  Attributes:
    base: number of leaves B (a power of two; paper: 8).
    combinations: combination names, a subset of ``COMBINATIONS`` (paper: add, mul; the control
      experiment adds max).
    activations: activation names, a subset of ``ACTIVATIONS`` (paper: identity, tanh, sigmoid,
      relu; the control experiment adds sin).
  """
  base: int = 8
  combinations: tuple[str, ...] = ("add", "mul")
  activations: tuple[str, ...] = ("identity", "tanh", "sigmoid", "relu")
  name: str = "rnn_cell"
  data_names: ClassVar[tuple[str, ...]] = ("ptb",)

  def __post_init__(self):
    _check_base(self.base)
    for field, names, vocab in (("combinations", self.combinations, COMBINATIONS),
                                ("activations", self.activations, ACTIVATIONS)):
      bad = [n for n in names if n not in vocab]
      if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"search_space.{field}: {tuple(names)} must be distinct names from "
                         f"{vocab}")

  @property
  def num_nodes(self) -> int:
    return num_nodes(self.base)

  @property
  def decisions(self) -> tuple[base.Decision, ...]:
    return (base.Decision("combination", len(self.combinations)),
            base.Decision("activation", len(self.activations)),
            base.Decision("cell_index", self.num_nodes))

  def num_layers(self, num_sampled: int) -> int:
    """Constant: the base (no depth schedule). ``plan`` accepts only this value."""
    del num_sampled
    return self.base

  def plan(self, num_layers: int | None = None) -> tuple[base.Step, ...]:
    if num_layers is not None and num_layers != self.base:
      raise ValueError(f"RNNCellSpace.plan: num_layers must be the base ({self.base}), "
                       f"got {num_layers}")
    per_node = (base.choice(0), base.choice(1))
    return per_node * (self.num_nodes + 1) + (base.choice(2), base.choice(2))

  def size(self) -> int:
    return space_size(self.base, len(self.combinations), len(self.activations))

  def decode(self, plan: Sequence[base.Step], tokens_T) -> CellArch:
    if tuple(plan) != self.plan():
      raise ValueError("RNNCellSpace.decode: the plan is not this space's plan")
    v = base.split_tokens(plan, tokens_T)
    n = self.num_nodes
    for i in range(0, 2 * n + 2, 2):
      if not (0 <= v[i] < len(self.combinations) and 0 <= v[i + 1] < len(self.activations)):
        raise ValueError(f"token out of range at position {i}: {v[i]}, {v[i + 1]}")
    if not (0 <= v[-2] < n and 0 <= v[-1] < n):
      raise ValueError(f"cell index out of range: {v[-2]}, {v[-1]} (nodes 0..{n - 1})")
    ops = [NodeOp(self.combinations[v[i]], self.activations[v[i + 1]])
           for i in range(0, 2 * n + 2, 2)]
    return CellArch(tuple(ops[:n]), ops[n], int(v[-2]), int(v[-1]))

  def encode(self, arch: CellArch) -> np.ndarray:
    """Inverse of :meth:`decode`: the flat tokens (int32) of ``arch``."""
    if len(arch.nodes) != self.num_nodes:
      raise ValueError(f"arch has {len(arch.nodes)} nodes, this space {self.num_nodes}")
    toks = []
    for op in tuple(arch.nodes) + (arch.inject,):
      toks += [self.combinations.index(op.combination), self.activations.index(op.activation)]
    return np.array(toks + [arch.c_node, arch.inject_node], np.int32)

  def ops(self, arch: CellArch) -> np.ndarray:
    """The fixed-length int32 encoding that :func:`cell_apply` takes (traced, vmappable).

    Layout (length ``4B + 2``): ``[comb_0, act_0, ..., comb_(2B-2), act_(2B-2), inj_comb,
    inj_act, c_node, inject_node]``; combination/activation entries are indices into the global
    ``COMBINATIONS`` / ``ACTIVATIONS`` (not into this space's subsets), so ops of spaces with
    different op sets are interchangeable.
    """
    return arch_ops(arch)

  def build(self, arch: CellArch, num_classes: int):
    raise NotImplementedError(
        "RNNCellSpace children are language models built by the LM trainer: use "
        "nas_jax.spaces.rnn_cell.init_cell / cell_apply with space.ops(arch)")

  def describe(self, arch: CellArch) -> str:
    nodes = " ".join(f"{i}:{o.combination}/{o.activation}" for i, o in enumerate(arch.nodes))
    return (f"{nodes} inject:{arch.inject.combination}/{arch.inject.activation}"
            f"@{arch.inject_node} c:{arch.c_node}")

  def from_json(self, obj) -> CellArch:
    """The inverse of ``base.to_json``; also takes a history row (its ``arch``).

    Raises:
      ValueError: ``obj`` is not a cell of this space's base in the history's JSON form.
    """
    if isinstance(obj, dict) and "arch" in obj:
      obj = obj["arch"]
    try:
      nodes = tuple(NodeOp(n["combination"], n["activation"]) for n in obj["nodes"])
      inj = obj["inject"]
      arch = CellArch(nodes, NodeOp(inj["combination"], inj["activation"]), int(obj["c_node"]),
                      int(obj["inject_node"]))
    except (KeyError, TypeError) as e:
      raise ValueError(f"not a cell architecture in the history's JSON form ({e!r}): "
                       f"{obj!r:.200}") from None
    if len(arch.nodes) != self.num_nodes:
      raise ValueError(f"a cell of {len(arch.nodes)} nodes; this space (base {self.base}) has "
                       f"{self.num_nodes}")
    return arch

  def diagram(self, arch: CellArch, title: str = ""):
    """The diagram of :func:`nas_jax.spaces.rnn_cell_diagram.draw` (a matplotlib Figure)."""
    from nas_jax.spaces import rnn_cell_diagram  # pylint: disable=import-outside-toplevel
    return rnn_cell_diagram.draw(arch, title)


def arch_ops(arch: CellArch) -> np.ndarray:
  """``RNNCellSpace.ops`` without a space (see there for the layout)."""
  out = []
  for op in tuple(arch.nodes) + (arch.inject,):
    out += [COMBINATIONS.index(op.combination), ACTIVATIONS.index(op.activation)]
  return np.array(out + [arch.c_node, arch.inject_node], np.int32)


NASCELL = CellArch(
    nodes=tuple(NodeOp(c, a) for c, a in [
        ("add", "sigmoid"), ("add", "relu"), ("add", "sigmoid"), ("mul", "relu"),    # l0..l3
        ("add", "tanh"), ("add", "sigmoid"), ("add", "tanh"), ("add", "sigmoid"),    # l4..l7
        ("mul", "tanh"), ("add", "tanh"), ("mul", "tanh"), ("add", "sigmoid"),       # a b d e
        ("mul", "identity"), ("add", "tanh"),                                        # c_new, f
        ("mul", "tanh"),                                                             # m_new
    ]),
    inject=NodeOp("add", "tanh"),   # a = tanh(a + c_prev)
    c_node=12,                      # c_new = a * b
    inject_node=8,                  # node a
)
"""The discovered NASCell as a base-8 :class:`CellArch`."""


def nascell_tokens(space: RNNCellSpace) -> np.ndarray:
  """The tokens of ``space``'s plan that encode the NASCell.

  Requires base 8 and a space that contains add, mul and identity, tanh, sigmoid, relu (extra ops,
  in any order, are fine).
  """
  if space.base != 8:
    raise ValueError(f"the NASCell has base 8, the space has base {space.base}")
  need_c, need_a = {"add", "mul"}, {"identity", "tanh", "sigmoid", "relu"}
  if not need_c <= set(space.combinations) or not need_a <= set(space.activations):
    raise ValueError(f"the NASCell needs combinations {sorted(need_c)} and activations "
                     f"{sorted(need_a)}; the space has {space.combinations}, {space.activations}")
  return space.encode(NASCELL)


# ----------------------------------------------------------------------------------------------
# The cell as pure functions


def init_cell(key: jax.Array, input_size: int, hidden_size: int, base: int = 8,
              use_bias: bool = True, init_scale: float | None = None,
              dtype=jnp.float32) -> Params:
  """Cell parameters: ``kernel`` (I, B*H), ``recurrent_kernel`` (H, B*H)[, ``bias`` (B*H,)].

  Leaf ``i`` uses block ``i`` (columns ``[i*H, (i+1)*H)``) of each: TF NASCell's layout, so a
  NASCell's params (without projection) are valid params of the base-8 cell. Weights are drawn from
  ``U(-s, s)`` with ``s = init_scale`` or, if None, ``1/sqrt(hidden_size)`` (PyTorch's RNN
  default); the bias starts at zero. Vmappable over ``key`` for per-child params.
  """
  _check_base(base)
  s = init_scale if init_scale is not None else 1.0 / math.sqrt(hidden_size)
  k1, k2 = jax.random.split(key)
  params = {"kernel": jax.random.uniform(k1, (input_size, base * hidden_size), dtype, -s, s),
            "recurrent_kernel": jax.random.uniform(k2, (hidden_size, base * hidden_size), dtype,
                                                   -s, s)}
  if use_bias:
    params["bias"] = jnp.zeros((base * hidden_size,), dtype)
  return params


def zero_carry(batch_shape: tuple[int, ...], hidden_size: int, dtype=jnp.float32):
  """The zero state ``(c, h)``."""
  z = jnp.zeros(tuple(batch_shape) + (hidden_size,), dtype)
  return (z, z)


def _position_table(names: tuple[str, ...], vocab: tuple[str, ...]) -> np.ndarray:
  """vocab id -> position in ``names`` (ids not in ``names`` map to the last name)."""
  return np.array([names.index(v) if v in names else len(names) - 1 for v in vocab], np.int32)


def _select(pos, cands):
  """``cands[pos]`` elementwise; ``pos`` (int) broadcasts against the candidates."""
  if len(cands) == 1:
    return cands[0]
  shape = jnp.broadcast_shapes(*(jnp.shape(c) for c in cands), jnp.shape(pos))
  which = jnp.broadcast_to(pos, shape)
  return jax.lax.select_n(which, *(jnp.broadcast_to(c, shape) for c in cands))


def _combine(pos, names, a, b):
  return _select(pos, [_COMB_FNS[n](a, b) for n in names])


class _Acts:
  """Per-op tables for :func:`_activate`: tanh and sigmoid share one tanh evaluation,
  ``sigmoid(v) = 0.5 + 0.5 tanh(v / 2)``, so a node computes at most one tanh."""

  def __init__(self, names: tuple[str, ...]):
    self.names = names
    kinds = ["tanh" if n in ("tanh", "sigmoid") else n for n in names]
    self.kinds = tuple(dict.fromkeys(kinds))           # distinct candidate computations
    to_kind = np.array([self.kinds.index(k) for k in kinds], np.int32)
    table = _position_table(names, ACTIVATIONS)
    self.kind = to_kind[table]                          # vocab id -> candidate index
    is_sig = np.array([names[t] == "sigmoid" for t in table])
    self.scale = np.where(is_sig, 0.5, 1.0).astype(np.float32)   # vocab id -> tanh arg scale
    self.shift = np.where(is_sig, 0.5, 0.0).astype(np.float32)   # ... and output a*t + shift


def _activate(kind, scale, shift, acts: _Acts, v):
  """The activation ``acts.names[...]`` chosen per node (kind/scale/shift from ``_Acts``)."""
  cands = []
  for k in acts.kinds:
    if k == "tanh":
      scale, shift = scale.astype(v.dtype), shift.astype(v.dtype)
      cands.append(jnp.tanh(v * scale) * (1 - shift) + shift)
    else:
      cands.append(_ACT_FNS[k](v))
  return _select(kind, cands)


def project_input(params: Params, x):
  """All leaves' input projections ``x @ kernel``: ``(..., I) -> (..., B*H)``.

  Independent of the state, so a trainer can do it for all time steps in one matmul outside
  ``lax.scan`` and feed the slices to :func:`cell_step` (the bias is *not* included: it belongs to
  the recurrent side, which matters for ``mul`` leaves).
  """
  return x @ params["kernel"]


def cell_apply(params: Params, ops, carry, x, *, combinations: Sequence[str] = COMBINATIONS,
               activations: Sequence[str] = ACTIVATIONS):
  """One step of the cell encoded by ``ops``.

  Args:
    params: from :func:`init_cell` (``bias`` optional; its presence turns it on).
    ops: int32 ``(4B + 2,)`` from :meth:`RNNCellSpace.ops`; may be traced (vmap over children).
      B is read from its (static) length.
    carry: ``(c_prev (..., H), h_prev (..., H))``.
    x: ``(..., I)``.
    combinations, activations: (static) the candidate ops computed at every node; the default is
      every op. Pass the space's ``combinations`` / ``activations`` to skip computing ops the space
      never uses (an op id outside the given names then acts as the last given name).

  Returns:
    ``((c_new, h_new), h_new)``: the Flax RNN-cell convention ``(new_carry, output)``.

  Equals ``cell_step(params, ops, carry, project_input(params, x), ...)``.
  """
  return cell_step(params, ops, carry, project_input(params, x), combinations=combinations,
                   activations=activations)


def cell_step(params: Params, ops, carry, xw, *, combinations: Sequence[str] = COMBINATIONS,
              activations: Sequence[str] = ACTIVATIONS):
  """:func:`cell_apply` with the input already projected: ``xw = project_input(params, x)``.

  ``h_prev`` enters only the recurrent product ``h_prev @ recurrent_kernel`` (``c_prev`` only the
  inject), so variational dropout on the recurrent connection is ``carry = (c, h * mask)``.
  The recurrent product is one matmul for all leaves; each tree level is then computed for all its
  nodes at once.
  """
  ops = jnp.asarray(ops)
  if ops.ndim != 1 or (ops.shape[0] - 2) % 4:
    raise ValueError(f"ops must have shape (4B+2,), got {ops.shape}")
  b = (ops.shape[0] - 2) // 4
  _check_base(b)
  n = num_nodes(b)
  c_prev, h_prev = carry
  hidden = h_prev.shape[-1]
  for name, cols in (("input projection", xw.shape[-1]),
                     ("recurrent_kernel", params["recurrent_kernel"].shape[-1])):
    if cols != b * hidden:
      raise ValueError(f"{name} has {cols} columns; ops say base {b} and the state has "
                       f"{hidden} units ({b * hidden} columns)")
  combinations, activations = tuple(combinations), tuple(activations)
  # global op ids -> positions in the computed candidate lists (one tiny gather per kind)
  comb_pos = jnp.asarray(_position_table(combinations, COMBINATIONS))[ops[0:2 * n + 2:2]]
  acts = _Acts(activations)
  act_ids = ops[1:2 * n + 2:2]
  a_kind = jnp.asarray(acts.kind)[act_ids]
  a_scale = jnp.asarray(acts.scale)[act_ids]
  a_shift = jnp.asarray(acts.shift)[act_ids]
  c_node, inj_node = ops[2 * n + 2], ops[2 * n + 3]

  batch = xw.shape[:-1]
  xw = xw.reshape(batch + (b, hidden))
  hu = h_prev @ params["recurrent_kernel"]
  if "bias" in params:
    hu = hu + params["bias"]
  hu = hu.reshape(batch + (b, hidden))

  left, right = xw, hu            # (..., nodes_in_level, H)
  c_new = None
  out = None
  c_prev_n = c_prev[..., None, :]
  for start, count in _levels(b):
    if out is not None:
      pair = out.reshape(batch + (count, 2, hidden))
      left, right = pair[..., 0, :], pair[..., 1, :]
    lv = slice(start, start + count)
    pre = _combine(comb_pos[lv][:, None], combinations, left, right)
    out = _activate(a_kind[lv][:, None], a_scale[lv][:, None], a_shift[lv][:, None], acts, pre)
    # Cell inject into this level's node inj_node (if it is in this level), and c_t: the
    # pre-activation of node c_node. One-hot masks rather than dynamic indexing: under vmap the
    # node indices are batched, and a batched dynamic index becomes gather/scatter (slow on CPU).
    inj_sel = (jnp.arange(count) == inj_node - start)[:, None]       # all False off this level
    picked = jnp.sum(jnp.where(inj_sel, out, 0.0), axis=-2, keepdims=True)
    merged = _combine(comb_pos[n], combinations, picked, c_prev_n)
    injected = _activate(a_kind[n], a_scale[n], a_shift[n], acts, merged)
    out = jnp.where(inj_sel, injected, out)
    c_sel = (jnp.arange(count) == c_node - start)[:, None]
    c_here = jnp.sum(jnp.where(c_sel, pre, 0.0), axis=-2)
    c_new = c_here if c_new is None else c_new + c_here

  h_new = out[..., 0, :]
  return (c_new, h_new), h_new
