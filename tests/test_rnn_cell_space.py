"""Tests for the recurrent-cell search space (nas_jax.spaces.rnn_cell): size formula, plan
and decisions, decoding, a hand-computed base-2 cell, the NASCell tokens computing exactly what
nas_jax.spaces.nascell.NASCell computes, vmap over several cells in one program, random cells."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax.spaces.nascell import NASCell, nascell_apply
from nas_jax.spaces import base
from nas_jax.spaces import rnn_cell
from nas_jax.spaces.rnn_cell import (NASCELL, CellArch, NodeOp, RNNCellSpace, cell_apply,
                                            init_cell, nascell_tokens, space_size)

CONTROL = RNNCellSpace(combinations=("add", "mul", "max"),
                       activations=("identity", "tanh", "sigmoid", "relu", "sin"))


def _params(rng, shape_prefix, I, H, b=8, bias=True):
  """Random cell params (numpy, float32): eager jax.random would cost seconds of compiling."""
  p = {"kernel": rng.uniform(-0.5, 0.5, shape_prefix + (I, b * H)),
       "recurrent_kernel": rng.uniform(-0.5, 0.5, shape_prefix + (H, b * H))}
  if bias:
    p["bias"] = rng.normal(0, 0.3, shape_prefix + (b * H,))
  return jax.tree.map(lambda a: np.asarray(a, np.float32), p)


def _scan(params, ops, carry, xs, **kw):
  return jax.lax.scan(lambda cr, x: cell_apply(params, ops, cr, x, **kw), carry, xs)


# ----------------------------------------------------------------------------------------------
# size, decisions, plan


def test_space_size():
  n = 2 * 8 - 1
  assert space_size() == (2 * 4) ** (n + 1) * n ** 2 == 8 ** 16 * 225
  assert 5e16 <= space_size() <= 7e16            # the paper: "approximately 6 x 10^16"
  assert RNNCellSpace().size() == space_size()
  big = CONTROL.size()
  assert big == space_size(8, 3, 5) == 15 ** 16 * 15 ** 2 > space_size()
  assert space_size(2, 2, 4) == 8 ** 4 * 3 ** 2
  # brute force on base 2 with one activation: count every token sequence of the plan
  sp = RNNCellSpace(base=2, combinations=("add", "mul"), activations=("tanh",))
  counts = [sp.decisions[s.decision].num_choices for s in sp.plan()]
  assert int(np.prod(counts)) == sp.size() == 2 ** 4 * 9


@pytest.mark.parametrize("b", [2, 4, 8])
def test_decisions_and_plan(b):
  space = RNNCellSpace(base=b)
  assert [(d.name, d.num_choices) for d in space.decisions] == [
      ("combination", 2), ("activation", 4), ("cell_index", 2 * b - 1)]
  plan = space.plan(space.num_layers(0))
  assert space.num_layers(0) == space.num_layers(10 ** 6) == b
  assert all(s.kind == base.CHOICE for s in plan)
  assert base.num_tokens(plan) == len(plan) == 2 * (2 * b - 1) + 2 + 2
  assert [s.decision for s in plan] == [0, 1] * (2 * b) + [2, 2]
  with pytest.raises(ValueError, match="base"):
    space.plan(b + 2)


def test_bad_fields():
  with pytest.raises(ValueError, match="power of two"):
    RNNCellSpace(base=6)
  with pytest.raises(ValueError, match="combinations"):
    RNNCellSpace(combinations=("add", "sub"))
  with pytest.raises(ValueError, match="activations"):
    RNNCellSpace(activations=())


def test_decode_hand_written_tokens():
  space = RNNCellSpace(base=2)
  #        node0: add/tanh  node1: mul/sigmoid  root: mul/relu  inject: add/identity  c=2 inj=0
  tokens = [0, 1, 1, 2, 1, 3, 0, 0, 2, 0]
  arch = space.decode(space.plan(), tokens)
  assert arch == CellArch((NodeOp("add", "tanh"), NodeOp("mul", "sigmoid"), NodeOp("mul", "relu")),
                          NodeOp("add", "identity"), c_node=2, inject_node=0)
  assert hash(arch) == hash(space.decode(space.plan(), np.array(tokens)))
  js = json.loads(json.dumps(base.to_json(arch)))
  assert js["c_node"] == 2 and js["nodes"][1] == {"combination": "mul", "activation": "sigmoid"}
  np.testing.assert_array_equal(space.encode(arch), tokens)
  assert space.describe(arch) == "0:add/tanh 1:mul/sigmoid 2:mul/relu inject:add/identity@0 c:2"
  with pytest.raises(ValueError):
    space.decode(space.plan(), tokens[:-1])
  with pytest.raises(ValueError, match="out of range"):
    space.decode(space.plan(), [0, 1, 1, 2, 1, 3, 0, 0, 3, 0])
  with pytest.raises(NotImplementedError, match="cell_apply"):
    space.build(arch, 10)


def test_nascell_tokens():
  space = RNNCellSpace()
  toks = nascell_tokens(space)
  assert toks.shape == (base.num_tokens(space.plan()),)
  arch = space.decode(space.plan(), toks)
  assert arch == NASCELL
  assert arch.c_node == 12 and arch.inject_node == 8 and arch.inject == NodeOp("add", "tanh")
  assert arch.nodes[3] == NodeOp("mul", "relu") and arch.nodes[12] == NodeOp("mul", "identity")
  # a space with extra ops has other token values for the same cell
  assert CONTROL.decode(CONTROL.plan(), nascell_tokens(CONTROL)) == NASCELL
  np.testing.assert_array_equal(space.ops(arch), CONTROL.ops(arch))
  with pytest.raises(ValueError, match="base 8"):
    nascell_tokens(RNNCellSpace(base=4))
  with pytest.raises(ValueError, match="needs"):
    nascell_tokens(RNNCellSpace(activations=("tanh", "sigmoid", "relu")))


# ----------------------------------------------------------------------------------------------
# the cell


def _sig(v):
  return 1 / (1 + np.exp(-v))


@pytest.mark.parametrize("c_node,inject_node", [(2, 1), (0, 0), (2, 2)])
def test_base2_cell_by_hand(c_node, inject_node):
  """Leaves: add/tanh, mul/sigmoid; root: max/relu; inject: mul/sin (needs the control ops)."""
  arch = CellArch((NodeOp("add", "tanh"), NodeOp("mul", "sigmoid"), NodeOp("max", "relu")),
                  NodeOp("mul", "sin"), c_node, inject_node)
  rng = np.random.default_rng(0)
  I, H = 3, 4
  W, U, bias = rng.normal(size=(I, 2 * H)), rng.normal(size=(H, 2 * H)), rng.normal(size=2 * H)
  x, c, h = rng.normal(size=(2, I)), rng.normal(size=(2, H)), rng.normal(size=(2, H))
  X, Hh = x @ W, h @ U + bias
  inj = lambda v: np.sin(v * c)
  pre = [X[:, :H] + Hh[:, :H], X[:, H:] * Hh[:, H:]]
  out = [np.tanh(pre[0]), _sig(pre[1])]
  if inject_node < 2:
    out[inject_node] = inj(out[inject_node])
  pre.append(np.maximum(out[0], out[1]))
  root = np.maximum(pre[2], 0)
  if inject_node == 2:
    root = inj(root)
  want_c = pre[c_node]

  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32),
                        {"kernel": W, "recurrent_kernel": U, "bias": bias})
  ops = rnn_cell.arch_ops(arch)
  assert ops.shape == (rnn_cell.ops_length(2),) == (10,)
  (c_new, h_new), out_h = jax.jit(cell_apply)(params, ops, (c, h), x)
  np.testing.assert_allclose(c_new, want_c, atol=1e-5)
  np.testing.assert_allclose(h_new, root, atol=1e-5)
  np.testing.assert_array_equal(out_h, h_new)


@pytest.mark.parametrize("use_bias", [False, True])
def test_nascell_tokens_compute_nascell(use_bias):
  space = RNNCellSpace()
  ops = space.ops(space.decode(space.plan(), nascell_tokens(space)))
  I, H, B, T = 3, 5, 2, 6
  cell = NASCell(H, use_bias=use_bias)
  rng = np.random.default_rng(0)
  xs = rng.normal(size=(T, B, I)).astype(np.float32)
  carry = tuple(rng.normal(0, 0.5, (2, B, H)).astype(np.float32))
  params = _params(rng, (), I, H, bias=use_bias)     # NASCell's TF layout (see test_nascell.py)
  # the leaves' W_i / U_i / b_i are the NASCell's kernel / recurrent_kernel / bias blocks
  leaf_params = {"kernel": params["kernel"], "recurrent_kernel": params["recurrent_kernel"]}
  if use_bias:
    leaf_params["bias"] = params["bias"]

  @jax.jit
  def run_all(params, leaf_params, carry, xs):
    want = jax.lax.scan(lambda cr, x: cell.apply({"params": params}, cr, x), carry, xs)
    if use_bias:   # every op computed (the default)
      others = [_scan(leaf_params, ops, carry, xs)]
    else:          # input projection of all steps hoisted out of the scan (the LM trainer's way)
      xw = rnn_cell.project_input(leaf_params, xs)
      others = [jax.lax.scan(lambda cr, x: rnn_cell.cell_step(leaf_params, ops, cr, x), carry, xw)]
    if use_bias:   # (compiling each variant takes a while on 2 cores: these run once)
      others.append(jax.lax.scan(lambda cr, x: nascell_apply(params, cr, x), carry, xs))
      others.append(_scan(leaf_params, ops, carry, xs, combinations=space.combinations,
                          activations=space.activations))
    return want, others

  want, others = run_all(params, leaf_params, carry, xs)
  for other in others:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), want, other)
  assert float(jnp.std(want[1])) > 0.01        # not a degenerate all-zero run


def _random_archs(space, n, seed):
  rng = np.random.default_rng(seed)
  plan = space.plan()
  maxes = [space.decisions[s.decision].num_choices for s in plan]
  toks = [np.array([rng.integers(c) for c in maxes]) for _ in range(n)]
  return [space.decode(plan, t) for t in toks]


def test_vmap_over_different_cells_equals_each_alone():
  space = RNNCellSpace()
  archs = _random_archs(space, 3, seed=1) + [NASCELL]
  ops = np.stack([space.ops(a) for a in archs])
  I, H, B, T, m = 4, 6, 3, 4, 4
  rng = np.random.default_rng(2)
  params = _params(rng, (m,), I, H)
  xs = rng.normal(size=(m, T, B, I)).astype(np.float32)
  carry = rnn_cell.zero_carry((m, B), H)
  (c_all, h_all), ys_all = jax.jit(jax.vmap(_scan))(params, ops, carry, xs)
  step = jax.jit(cell_apply)      # alone: a Python loop over one child's jitted step
  for k in range(m):
    pk = jax.tree.map(lambda a: a[k], params)
    carry_k = (carry[0][k], carry[1][k])
    for t in range(T):
      carry_k, y = step(pk, ops[k], carry_k, xs[k, t])
      np.testing.assert_allclose(ys_all[k, t], y, atol=1e-5)
    np.testing.assert_allclose(c_all[k], carry_k[0], atol=1e-5)
    np.testing.assert_allclose(h_all[k], carry_k[1], atol=1e-5)
  assert len({a for a in archs}) == m


@pytest.mark.parametrize("space", [RNNCellSpace(), CONTROL, RNNCellSpace(base=4, activations=(
    "tanh", "relu", "sigmoid"))], ids=["paper", "control", "base4"])
def test_random_cells_run_finite_with_fixed_ops_length(space):
  m = 16
  archs = _random_archs(space, m, seed=space.base + len(space.activations))
  ops = np.stack([space.ops(a) for a in archs])
  assert ops.dtype == np.int32 and ops.shape == (m, 4 * space.base + 2)
  assert all(space.decode(space.plan(), space.encode(a)) == a for a in archs)
  I, H, B, T = 3, 4, 2, 5
  rng = np.random.default_rng(3)
  params = _params(rng, (m,), I, H, b=space.base)
  xs = rng.normal(size=(T, B, I)).astype(np.float32)
  carry = rnn_cell.zero_carry((B,), H)

  def loss(params, ops):
    (c, h), ys = _scan(params, ops, carry, xs, combinations=space.combinations,
                       activations=space.activations)
    return jnp.mean(ys ** 2), (c, ys)

  if space.base == 4:   # gradients too (compiling them is the slow part: once is enough)
    grads, (c, ys) = jax.jit(jax.vmap(jax.grad(loss, has_aux=True)))(params, ops)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
  else:
    _, (c, ys) = jax.jit(jax.vmap(loss))(params, ops)
  assert ys.shape == (m, T, B, H) and c.shape == (m, B, H)
  assert np.isfinite(ys).all() and np.isfinite(c).all()


def test_init_cell_layout():
  keys = jax.random.split(jax.random.key(0, impl="rbg"), 2)
  p = jax.jit(jax.vmap(lambda k: init_cell(k, 7, 5, base=4, use_bias=True)))(keys)
  assert {k: v.shape for k, v in p.items()} == {
      "kernel": (2, 7, 20), "recurrent_kernel": (2, 5, 20), "bias": (2, 20)}
  assert 0.5 / np.sqrt(5) < float(jnp.max(jnp.abs(p["kernel"]))) <= 1 / np.sqrt(5)
  assert not np.allclose(p["kernel"][0], p["kernel"][1])
  np.testing.assert_array_equal(p["bias"], 0.0)
  assert "bias" not in jax.eval_shape(lambda k: init_cell(k, 7, 5, use_bias=False),
                                      jax.random.key(0))
  p = jax.tree.map(lambda a: a[0], p)
  with pytest.raises(ValueError, match="columns"):
    cell_apply(p, rnn_cell.arch_ops(NASCELL), rnn_cell.zero_carry((1,), 5), jnp.zeros((1, 7)))


def test_controller_samples_decodable_cells():
  """The controller walks this space's plan; at init (near uniform) -log p ~ log(space size)."""
  from nas_jax.core import controller
  space = RNNCellSpace()
  plan = space.plan(space.num_layers(0))
  params = controller.init(jax.random.key(0), space.decisions)
  toks, logp, _ = controller.sample(params, jax.random.key(1), plan=plan,
                                    decisions=space.decisions, m=4)
  for t in np.asarray(toks):
    arch = space.decode(plan, t)
    assert space.ops(arch).shape == (rnn_cell.ops_length(8),)
  np.testing.assert_allclose(-np.asarray(logp), np.log(space.size()), atol=1.0)


def test_a_cell_of_products_with_the_zero_state_is_dead_and_the_nascell_is_not():
  """lm_cells.is_dead: an all-``mul`` tree multiplies every leaf's input by the recurrent side,
  which is 0 from the zero state (zero bias): its output is 0 at every step, whatever the input."""
  from nas_jax.training import lm_cells  # pylint: disable=import-outside-toplevel
  space = rnn_cell.RNNCellSpace()
  cell = lm_cells.searched_lm_cell(space)
  dead = rnn_cell.CellArch(tuple(rnn_cell.NodeOp("mul", "identity") for _ in range(15)),
                           rnn_cell.NodeOp("mul", "identity"), 0, 14)
  assert lm_cells.is_dead(cell, space.ops(dead))
  assert not lm_cells.is_dead(cell, space.ops(rnn_cell.NASCELL))
