"""Tests for the NASCell (nas_jax.spaces.nascell): TF weight layout, outputs against the paper's equations
computed by hand with numpy (with/without bias, with projection), a closed-form zero-input case,
a 5-step scan (lax.scan over the pure function and flax's nn.RNN over the module), vmap over
per-model params."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax.spaces.nascell import (NASCell, nascell_apply, nascell_init, nascell_project, nascell_step,
                            nascell_zero_carry)

IN, UNITS, BATCH, PROJ = 2, 3, 2, 2


def _sig(v):
  return 1.0 / (1.0 + np.exp(-v))


def _np_step(K, R, b, P, c_prev, m_prev, x):
  """The equations of PAPER.md, written out block by block in float64 numpy."""
  u = K.shape[1] // 8
  X = [x @ K[:, i * u:(i + 1) * u] for i in range(8)]
  H = [m_prev @ R[:, i * u:(i + 1) * u] + (0.0 if b is None else b[i * u:(i + 1) * u])
       for i in range(8)]
  relu = lambda v: np.maximum(v, 0.0)
  l0 = _sig(X[0] + H[0])
  l1 = relu(X[1] + H[1])
  l2 = _sig(X[2] + H[2])
  l3 = relu(X[3] * H[3])
  l4 = np.tanh(X[4] + H[4])
  l5 = _sig(X[5] + H[5])
  l6 = np.tanh(X[6] + H[6])
  l7 = _sig(X[7] + H[7])
  a = np.tanh(l0 * l1)
  bb = np.tanh(l2 + l3)
  d = np.tanh(l4 * l5)
  e = _sig(l6 + l7)
  a = np.tanh(a + c_prev)
  c_new = a * bb
  f = np.tanh(d + e)
  m_new = np.tanh(c_new * f)
  if P is not None:
    m_new = m_new @ P
  return c_new, m_new


def _explicit_weights(use_bias, num_proj):
  """Small deterministic weights (no RNG): K (2, 24), R (3 or p, 24), b (24,), P (3, p)."""
  m_size = num_proj or UNITS
  K = (np.arange(IN * 8 * UNITS).reshape(IN, 8 * UNITS) % 7 - 3) * 0.15
  R = (np.arange(m_size * 8 * UNITS).reshape(m_size, 8 * UNITS) % 5 - 2) * 0.2
  params = {"kernel": K, "recurrent_kernel": R}
  if use_bias:
    params["bias"] = (np.arange(8 * UNITS) % 3 - 1) * 0.3
  if num_proj:
    params["projection"] = np.array([[0.5, -0.4], [0.3, 0.9], [-0.7, 0.2]])[:, :num_proj]
  return params


X0 = np.array([[0.5, -1.0], [1.5, 0.25]])


@pytest.mark.parametrize("use_bias,num_proj", [(False, None), (True, None), (True, PROJ),
                                               (False, PROJ)])
def test_one_step_matches_hand_computation(use_bias, num_proj):
  p = _explicit_weights(use_bias, num_proj)
  m_size = num_proj or UNITS
  c_prev = np.array([[0.1, -0.2, 0.3], [0.0, 0.5, -0.6]])
  m_prev = np.linspace(-0.5, 0.5, BATCH * m_size).reshape(BATCH, m_size)
  want_c, want_m = _np_step(p["kernel"], p["recurrent_kernel"], p.get("bias"),
                            p.get("projection"), c_prev, m_prev, X0)

  jp = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p)
  (c, m), out = nascell_apply(jp, (jnp.asarray(c_prev, jnp.float32),
                                   jnp.asarray(m_prev, jnp.float32)), jnp.asarray(X0, jnp.float32))
  np.testing.assert_allclose(c, want_c, atol=1e-5)
  np.testing.assert_allclose(m, want_m, atol=1e-5)
  np.testing.assert_array_equal(out, m)
  assert c.shape == (BATCH, UNITS) and m.shape == (BATCH, m_size)

  # The Flax module with the same params gives the same numbers.
  cell = NASCell(UNITS, num_proj=num_proj, use_bias=use_bias)
  (c2, m2), out2 = cell.apply({"params": jp}, (c_prev, m_prev), X0)
  np.testing.assert_allclose(c2, want_c, atol=1e-5)
  np.testing.assert_allclose(m2, want_m, atol=1e-5)


def test_closed_form_zero_input():
  """x = 0 and m_prev = 0 make every X_i, H_i zero; the result is then a closed form in c_prev."""
  p = {"kernel": jnp.full((1, 8), 0.7), "recurrent_kernel": jnp.full((1, 8), -1.3)}
  (c, m), _ = nascell_apply(p, (jnp.ones((1, 1)), jnp.zeros((1, 1))), jnp.zeros((1, 1)))
  sig = lambda v: 1 / (1 + math.exp(-v))
  # l0 = l2 = l5 = l7 = 1/2, l1 = l3 = l4 = l6 = 0: a = tanh(0) = 0, b = tanh(1/2), d = 0,
  # e = sigmoid(1/2); a = tanh(0 + 1); c = tanh(1) tanh(1/2); f = tanh(sigmoid(1/2)).
  want_c = math.tanh(1.0) * math.tanh(0.5)
  want_m = math.tanh(want_c * math.tanh(sig(0.5)))
  np.testing.assert_allclose(c[0, 0], want_c, atol=1e-6)
  np.testing.assert_allclose(m[0, 0], want_m, atol=1e-6)


@pytest.mark.parametrize("use_bias,num_proj", [(False, None), (True, None), (True, 4)])
def test_param_shapes_are_tf_layout(use_bias, num_proj):
  u, i = 5, 3
  cell = NASCell(u, num_proj=num_proj, use_bias=use_bias)
  x = jnp.zeros((2, i))
  carry = cell.initialize_carry(jax.random.key(0), x.shape)
  m_size = num_proj or u
  assert carry[0].shape == (2, u) and carry[1].shape == (2, m_size)
  params = jax.eval_shape(cell.init, jax.random.key(0), carry, x)["params"]
  want = {"kernel": (i, 8 * u), "recurrent_kernel": (m_size, 8 * u)}
  if use_bias:
    want["bias"] = (8 * u,)
  if num_proj:
    want["projection"] = (u, num_proj)
  assert {k: v.shape for k, v in params.items()} == want
  pure = jax.eval_shape(lambda k: nascell_init(k, i, u, num_proj=num_proj, use_bias=use_bias),
                        jax.random.key(1))
  assert {k: v.shape for k, v in pure.items()} == want


def test_scan_five_steps():
  p = _explicit_weights(True, PROJ)
  xs = np.random.default_rng(0).normal(size=(5, BATCH, IN))
  c, m = np.zeros((BATCH, UNITS)), np.zeros((BATCH, PROJ))
  want = []
  for t in range(5):
    c, m = _np_step(p["kernel"], p["recurrent_kernel"], p["bias"], p["projection"], c, m, xs[t])
    want.append(m)
  want = np.stack(want)

  jp = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p)
  xs32 = jnp.asarray(xs, jnp.float32)
  carry0 = nascell_zero_carry((BATCH,), UNITS, PROJ)
  (c_last, _), ys = jax.jit(lambda p, c, x: jax.lax.scan(
      lambda cr, xt: nascell_apply(p, cr, xt), c, x))(jp, carry0, xs32)
  np.testing.assert_allclose(ys, want, atol=1e-5)
  np.testing.assert_allclose(c_last, c, atol=1e-5)

  # input product of all steps hoisted out of the scan, then nascell_step per step
  xk = nascell_project(jp, xs32)
  _, ys_hoisted = jax.lax.scan(lambda cr, xt: nascell_step(jp, cr, xt), carry0, xk)
  np.testing.assert_allclose(ys_hoisted, want, atol=1e-5)

  # flax nn.RNN over the module (batch-major input)
  rnn = nn.RNN(NASCell(UNITS, num_proj=PROJ, use_bias=True))
  ys2 = rnn.apply({"params": {"cell": jp}}, jnp.swapaxes(xs32, 0, 1))
  np.testing.assert_allclose(jnp.swapaxes(ys2, 0, 1), want, atol=1e-5)


def test_vmap_over_per_model_params():
  keys = jax.random.split(jax.random.key(3, impl="rbg"), 3)
  ps = jax.jit(jax.vmap(lambda k: nascell_init(k, IN, UNITS, use_bias=True)))(keys)
  np.testing.assert_array_equal(ps["bias"], 0.0)
  assert not np.allclose(ps["kernel"][0], ps["kernel"][1])
  limit = np.sqrt(6 / (IN + 8 * UNITS))          # Glorot uniform
  assert 0.5 * limit < float(jnp.abs(ps["kernel"]).max()) <= limit
  x = jnp.asarray(X0, jnp.float32)
  carry = nascell_zero_carry((BATCH,), UNITS)
  carry = (carry[0] + 0.3, carry[1] - 0.2)
  _, outs = jax.vmap(nascell_apply, in_axes=(0, None, None))(ps, carry, x)
  for k in range(3):
    _, one = nascell_apply(jax.tree.map(lambda a: a[k], ps), carry, x)
    np.testing.assert_allclose(outs[k], one, atol=1e-6)


# TensorFlow's published test vectors for its NASCell (tf.contrib.rnn's rnn_cell_test.py,
# testNASCell and testNASCellProj, kept in tensorflow_addons' cell_test.py): every kernel 0.5, the
# bias 0, inputs rows of 1s, 2s and 3s, state 0.1. Each row is constant across units.
_TF_NASCELL = {  # num_proj -> (new c, new m = output), the first unit of each of the 3 rows
    None: ([0.71579772, 0.78041625, 0.79457647], [0.576751, 0.618936, 0.627393]),
    5: ([0.69855207, 0.77073824, 0.78973997], [1.697418, 1.840037, 1.873985]),
}


@pytest.mark.parametrize("num_proj", [None, 5])
@pytest.mark.parametrize("use_bias", [False, True])
def test_tensorflows_published_nascell_vectors(num_proj, use_bias):
  params = nascell_init(jax.random.key(0), 4, 6, num_proj=num_proj, use_bias=use_bias)
  params = {k: jnp.zeros_like(v) if k == "bias" else jnp.full_like(v, 0.5)
            for k, v in params.items()}
  x = jnp.asarray([[1.0] * 4, [2.0] * 4, [3.0] * 4])
  carry = (0.1 * jnp.ones((3, 6)), 0.1 * jnp.ones((3, num_proj or 6)))
  (c, m), out = nascell_apply(params, carry, x)
  want_c, want_m = (np.asarray(v, np.float32)[:, None] for v in _TF_NASCELL[num_proj])
  assert c.shape == (3, 6) and m.shape == (3, num_proj or 6)
  np.testing.assert_allclose(c, np.broadcast_to(want_c, c.shape), rtol=1e-5)
  np.testing.assert_allclose(m, np.broadcast_to(want_m, m.shape), rtol=1e-5)
  np.testing.assert_array_equal(out, m)
