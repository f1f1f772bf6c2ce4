"""Cells for the language model (:class:`nas_jax.training.lm.Cell`): LSTM, NASCell, searched."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from nas_jax.training import lm
from nas_jax.spaces import enas_cell, nascell, rnn_cell

NO_OPS = np.zeros((0,), np.int32)  # numpy: no JAX backend is touched at import (jax.distributed)


def nascell_lm_cell(init_scale: float = 0.1, use_bias: bool = True) -> lm.Cell:
  """The discovered NASCell (TF weight layout), weights U(-init_scale, init_scale)."""

  def init(key, input_size, hidden_size):
    params = nascell.nascell_init(key, input_size, hidden_size, use_bias=use_bias)
    keys = jax.random.split(key, len(params))
    return {k: jax.random.uniform(kk, v.shape, v.dtype, -init_scale, init_scale)
            for kk, (k, v) in zip(keys, sorted(params.items()))}

  def step(params, ops, carry, xk, h_mask):
    del ops
    c, h = carry
    return nascell.nascell_step(params, (c, h * h_mask), xk)

  return lm.Cell(init, nascell.nascell_project, step, _zero_carry)


CELL_SPACES = (rnn_cell.RNNCellSpace, enas_cell.ENASCellSpace)
"""The cell spaces whose cells the language model runs (:func:`searched_lm_cell`)."""


def searched_lm_cell(space, init_scale: float = 0.1) -> lm.Cell:
  """Any cell of ``space`` (one of :data:`CELL_SPACES`); the architecture is the ``ops`` array
  (``space.ops(arch)``)."""
  if isinstance(space, enas_cell.ENASCellSpace):
    return _enas_lm_cell(space, init_scale)
  combos, acts = tuple(space.combinations), tuple(space.activations)

  def init(key, input_size, hidden_size):
    return rnn_cell.init_cell(key, input_size, hidden_size, base=space.base, use_bias=True,
                              init_scale=init_scale)

  def step(params, ops, carry, xw, h_mask):
    c, h = carry
    return rnn_cell.cell_step(params, ops, (c, h * h_mask), xw, combinations=combos,
                              activations=acts)

  return lm.Cell(init, rnn_cell.project_input, step, _zero_carry)


def _enas_lm_cell(space: enas_cell.ENASCellSpace, init_scale: float) -> lm.Cell:
  acts = tuple(space.activations)

  def init(key, input_size, hidden_size):
    return enas_cell.init_cell(key, input_size, hidden_size, space.nodes, len(acts), init_scale)

  def step(params, ops, carry, xw, h_mask):
    return enas_cell.cell_step(params, ops, carry, xw, h_mask, activations=acts)

  def select(params, ops):
    return enas_cell.select_weights(params, ops, acts)

  return lm.Cell(init, enas_cell.project_input, step, _zero_carry, select)


def cell_param_count(space, params) -> int:
  """The parameters of an exact child LM whose (shared-layout) parameters are ``params``: all of
  them, less what an ENAS cell leaves unused (:meth:`ENASCellSpace.unused_params`); ``space``:
  the cell's space, or a ``config.cell`` name (:func:`from_name`'s), or None."""
  if isinstance(space, str):
    space = _summary_cell(space)[0] if space.endswith(".json") else None
  total = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  unused = getattr(space, "unused_params", None)
  if unused is None:
    return total
  return total - sum(unused(int(layer["wh"].shape[0])) for layer in params["layers"])


def _zero_carry(batch, hidden_size):  # two buffers: the train step donates the carry
  return (jnp.zeros((batch, hidden_size), jnp.float32),
          jnp.zeros((batch, hidden_size), jnp.float32))


def from_name(name: str, init_scale: float = 0.1):
  """(cell, ops, description) for ``config.cell``: lstm, nascell, or a search's summary.json."""
  if name == "lstm":
    return lm.lstm_cell(init_scale), NO_OPS, "LSTM"
  if name == "nascell":
    return nascell_lm_cell(init_scale), NO_OPS, "NASCell"
  if name.endswith(".json"):
    space, arch = _summary_cell(name)
    return searched_lm_cell(space, init_scale), jnp.asarray(space.ops(arch)), space.describe(arch)
  raise ValueError(f"config.cell: unknown cell {name!r}; use 'lstm', 'nascell' or the path of a "
                   "cell search's summary.json")


def _summary_cell(path: str):
  """(space, arch) of the best cell in a cell search's ``summary.json``."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"config.cell: {path} does not exist; give the summary.json of a "
                            "finished cell search")
  with open(path) as f:
    summary = json.load(f)
  best = summary.get("best") or {}
  if "nodes" not in best.get("arch", {}):
    raise ValueError(f"config.cell: {path} holds no recurrent cell (is it a cell search?)")
  space_fields = dict(summary.get("search_space", {}))
  cls = (enas_cell.ENASCellSpace if space_fields.get("name") == "enas_cell"
         else rnn_cell.RNNCellSpace)
  space = cls(**{k: tuple(v) if isinstance(v, list) else v
                 for k, v in space_fields.items() if k != "name"})
  return space, space.decode(space.plan(), best["tokens"])


def is_dead(cell: lm.Cell, ops, steps: int = 20, seed: int = 0) -> bool:
  """Whether the cell's output stays exactly 0 from a zero state whatever its input and weights
  (random draws of both, ``steps`` steps): e.g. a tree whose every path to the output multiplies
  by the zero state. A language model with a dead cell learns no more than its softmax bias."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  params = cell.init(k1, 8, 16)
  if cell.select is not None:
    params = cell.select(params, ops)
  carry = cell.init_carry(4, 16)
  x = jax.random.normal(k2, (steps, 4, 8))
  ones = jnp.ones((4, 16), jnp.float32)
  for t in range(steps):
    carry, out = cell.step(params, ops, carry, cell.project(params, x[t]), ones)
    if bool(jnp.any(out != 0)):
      return False
  return True
