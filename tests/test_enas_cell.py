"""ENAS's recurrent-cell space (nas_jax/spaces/enas_cell.py): tokens, the cell's equations, its
weights per pair of nodes, and both searches on it."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax import config as config_lib, configs, experiment
from nas_jax.spaces import base, enas_cell
from nas_jax.spaces.enas_cell import ENASCellArch, ENASCellSpace, ENASNode
from nas_jax.training import lm, lm_cells

H, I = 5, 3


def _all_tokens(space):
  plan = space.plan()
  sizes = [space.decisions[s.decision].num_choices for s in plan]
  return plan, itertools.product(*(range(n) for n in sizes))


def test_every_token_sequence_is_a_distinct_cell_and_encodes_back():
  space = ENASCellSpace(nodes=4)
  plan, seqs = _all_tokens(space)
  seen = set()
  for toks in seqs:
    arch = space.decode(plan, np.array(toks))
    assert arch.nodes[0].prev == -1 and arch.nodes[1].prev == 0
    assert all(0 <= n.prev < l for l, n in enumerate(arch.nodes) if l)
    assert space.encode(arch).tolist() == list(toks)
    assert space.from_json(json.loads(json.dumps(base.to_json(arch)))) == arch
    seen.add(arch)
  assert len(seen) == space.size() == 4 ** 4 * 3 * 2     # A^N (N-1)!


def test_loose_ends_are_the_nodes_no_node_reads():
  arch = ENASCellArch((ENASNode(-1, "tanh"), ENASNode(0, "relu"), ENASNode(0, "identity"),
                       ENASNode(2, "sigmoid")))
  assert arch.loose_ends() == (1, 3)
  assert ENASCellSpace(nodes=4).describe(arch) == ("0:tanh 1:relu<0 2:identity<0 3:sigmoid<2 "
                                                   "out:1,3")


def _params(nodes, seed=0):
  return enas_cell.init_cell(jax.random.key(seed), I, H, nodes, init_scale=0.5)


ACTS = enas_cell.ENAS_ACTIVATIONS   # the order of w's activation axis


def _by_hand(params, arch, x, h):
  """The cell's equations for one architecture, node by node in numpy."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x, h = np.asarray(x, np.float64), np.asarray(h, np.float64)
  f = {"tanh": np.tanh, "relu": lambda v: np.maximum(v, 0), "identity": lambda v: v,
       "sigmoid": lambda v: 1 / (1 + np.exp(-v))}
  sig = f["sigmoid"]
  pre = x @ p["wx"] + h @ p["wh"]
  c = sig(pre[:, :H])
  states = [c * f[arch.nodes[0].activation](pre[:, H:]) + (1 - c) * h]
  for l, node in enumerate(arch.nodes[1:], 1):
    hin = states[node.prev]
    pre = hin @ p["w"][l - 1, ACTS.index(node.activation), node.prev]
    c = sig(pre[:, :H])
    states.append(c * f[node.activation](pre[:, H:]) + (1 - c) * hin)
  return np.mean([states[l] for l in arch.loose_ends()], axis=0)


ARCHS = [ENASCellArch((ENASNode(-1, "tanh"), ENASNode(0, "relu"), ENASNode(1, "identity"),
                       ENASNode(2, "sigmoid"))),                     # a chain: one loose end
         ENASCellArch((ENASNode(-1, "sigmoid"), ENASNode(0, "tanh"), ENASNode(0, "relu"),
                       ENASNode(1, "tanh"))),                        # loose ends 2 and 3
         ENASCellArch((ENASNode(-1, "identity"), ENASNode(0, "identity"), ENASNode(0, "tanh"),
                       ENASNode(0, "relu")))]                        # loose ends 1, 2, 3


def test_the_cell_computes_enas_highway_nodes_and_averages_the_loose_ends():
  space, params = ENASCellSpace(nodes=4), _params(4)
  x = jax.random.normal(jax.random.key(1), (2, I))
  h = jax.random.normal(jax.random.key(2), (2, H))
  for arch in ARCHS:
    (_, out), y = enas_cell.cell_apply(params, space.ops(arch), (h, h), x)
    np.testing.assert_allclose(y, _by_hand(params, arch, x, h), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out, y)
    picked = enas_cell.select_weights(params, space.ops(arch))   # what the LM does per segment
    np.testing.assert_array_equal(enas_cell.cell_apply(picked, space.ops(arch), (h, h), x)[1], y)
  # m cells vmapped over their ops arrays are each cell alone
  ops = jnp.stack([space.ops(a) for a in ARCHS])
  ys = jax.vmap(lambda o: enas_cell.cell_apply(params, o, (h, h), x)[1])(ops)
  for arch, y in zip(ARCHS, ys):
    np.testing.assert_allclose(y, _by_hand(params, arch, x, h), rtol=1e-5, atol=1e-6)


def test_each_node_read_and_activation_has_its_own_weights():
  """A cell reads only the matrices of its (node, activation, node read) choices: changing another
  read's or another activation's weights changes nothing, changing its own changes the output."""
  space, params = ENASCellSpace(nodes=4), _params(4)
  arch = ARCHS[1]                      # node 3: tanh, reads node 1
  x, h = jnp.ones((1, I)), jnp.ones((1, H)) * 0.3
  run = lambda p: enas_cell.cell_apply(p, space.ops(arch), (h, h), x)[1]
  base_out = run(params)
  tanh, relu = ACTS.index("tanh"), ACTS.index("relu")
  for other in ((2, tanh, 2), (2, relu, 1)):   # node 3 reading node 2; node 3 as relu
    changed = {**params, "w": params["w"].at[other].add(1.0)}
    np.testing.assert_array_equal(run(changed), base_out)
  own = {**params, "w": params["w"].at[2, tanh, 1].add(1.0)}
  assert not np.allclose(run(own), base_out)


def test_an_exact_child_counts_only_the_pairs_it_uses():
  space = ENASCellSpace(nodes=4)
  cfg = lm.LMConfig(num_layers=2, hidden_size=H, embed_size=I)
  params = jax.eval_shape(lambda k: lm.init_params(k, 10, lm_cells.searched_lm_cell(space), cfg),
                          jax.random.key(0))
  total = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  # per layer: 3 of the 3 x 4 x 3 stored matrices are one child's
  assert lm_cells.cell_param_count(space, params) == total - 2 * (36 - 3) * H * 2 * H


@pytest.mark.parametrize("name", ["rnn_ptb_enas_cpu", "rnn_ptb_enas_shared_cpu"])
def test_both_searches_run_on_enas_cells(tmp_path, name):
  cfg = configs.get_config(name, "quick")
  result = experiment.run_search(cfg, str(tmp_path), progress=False)
  rows = [json.loads(line) for line in open(tmp_path / "history.jsonl")]
  space = config_lib.parse(cfg).search_space
  assert isinstance(space, ENASCellSpace) and space.nodes == 4
  assert result.best is not None and all(r["description"].startswith("0:") for r in rows)
  assert all(space.from_json(r) for r in rows)
  summary = json.loads((tmp_path / "summary.json").read_text())
  cell, ops, desc = lm_cells.from_name(str(tmp_path / "summary.json"))
  assert desc == summary["best"]["description"] and ops.shape == (2 * 4 - 1,)
  ok = [r for r in rows if not r["failed"]]
  assert ok and all(0 < r["val_ppl"] < 60 for r in ok)   # a 50-character vocabulary
