"""Cells for the language model (:class:`nas_jax.training.lm.Cell`): LSTM, NASCell, searched."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from nas_jax.training import lm
from nas_jax.spaces import nascell
from nas_jax.spaces import rnn_cell

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


def searched_lm_cell(space: rnn_cell.RNNCellSpace, init_scale: float = 0.1) -> lm.Cell:
  """Any cell of ``space``; the architecture is the ``ops`` array (``space.ops(arch)``)."""
  combos, acts = tuple(space.combinations), tuple(space.activations)

  def init(key, input_size, hidden_size):
    return rnn_cell.init_cell(key, input_size, hidden_size, base=space.base, use_bias=True,
                              init_scale=init_scale)

  def step(params, ops, carry, xw, h_mask):
    c, h = carry
    return rnn_cell.cell_step(params, ops, (c, h * h_mask), xw, combinations=combos,
                              activations=acts)

  return lm.Cell(init, rnn_cell.project_input, step, _zero_carry)


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
    if not os.path.exists(name):
      raise FileNotFoundError(f"config.cell: {name} does not exist; give the summary.json of a "
                              "finished cell search")
    with open(name) as f:
      summary = json.load(f)
    best = summary.get("best") or {}
    if "nodes" not in best.get("arch", {}):
      raise ValueError(f"config.cell: {name} holds no recurrent cell (is it a cell search?)")
    space_fields = summary.get("search_space", {})
    space = rnn_cell.RNNCellSpace(**{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in space_fields.items() if k != "name"})
    arch = space.decode(space.plan(), best["tokens"])
    return searched_lm_cell(space, init_scale), jnp.asarray(space.ops(arch)), space.describe(arch)
  raise ValueError(f"config.cell: unknown cell {name!r}; use 'lstm', 'nascell' or the path of a "
                   "cell search's summary.json")
