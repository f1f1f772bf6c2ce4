"""The recurrent cell discovered by Zoph & Le (2017) ("NASCell"), as pure functions and a Flax cell.

Weights follow TensorFlow's ``NASCell`` layout (``tf.contrib.rnn.NASCell``):

* ``kernel`` (input_size, 8u): the input projections of the 8 leaves, block ``i`` = columns
  ``[i*u, (i+1)*u)``;
* ``recurrent_kernel`` (u or num_proj, 8u): the recurrent projections, same blocks;
* ``bias`` (8u,), optional: added to the recurrent product only;
* ``projection`` (u, num_proj), optional: applied to the new output ``m``.

With ``X_i = x K_i`` and ``H_i = m_prev R_i (+ b_i)``::

    l0 = sigmoid(X0 + H0)   l1 = relu(X1 + H1)    l2 = sigmoid(X2 + H2)  l3 = relu(X3 * H3)
    l4 = tanh(X4 + H4)      l5 = sigmoid(X5 + H5) l6 = tanh(X6 + H6)     l7 = sigmoid(X7 + H7)
    a = tanh(l0 * l1)   b = tanh(l2 + l3)   d = tanh(l4 * l5)   e = sigmoid(l6 + l7)
    a = tanh(a + c_prev)          # cell inject
    c_new = a * b                 # cell index
    f = tanh(d + e)
    m_new = tanh(c_new * f)       # then m_new @ projection if projecting

The state is ``(c, m)``; ``c`` has ``u`` units, ``m`` has ``num_proj`` units when projecting
(else ``u``). :func:`nascell_apply` returns ``((c_new, m_new), m_new)``, the Flax RNN-cell
convention ``(new_carry, output)``, so it is a ``jax.lax.scan`` body as is and vmaps over
per-model parameter pytrees. :class:`NASCell` is the same maths as a ``flax.linen`` cell (usable
with ``nn.RNN``); its ``params`` collection is exactly the dict of :func:`nascell_init`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Params = dict

NUM_BLOCKS = 8

_kernel_init = nn.initializers.glorot_uniform()
_bias_init = nn.initializers.zeros_init()


def _shapes(input_size: int, num_units: int, num_proj: int | None, use_bias: bool) -> dict:
  m_size = num_proj if num_proj is not None else num_units
  shapes = {"kernel": (input_size, NUM_BLOCKS * num_units),
            "recurrent_kernel": (m_size, NUM_BLOCKS * num_units)}
  if use_bias:
    shapes["bias"] = (NUM_BLOCKS * num_units,)
  if num_proj is not None:
    shapes["projection"] = (num_units, num_proj)
  return shapes


def nascell_init(key: jax.Array, input_size: int, num_units: int, num_proj: int | None = None,
                 use_bias: bool = False, dtype=jnp.float32) -> Params:
  """NASCell parameters in TF's layout (see the module docstring).

  Kernels, recurrent kernel and projection: Glorot-uniform (TF's default initializer); bias: zeros.
  Vmappable over ``key`` (shapes are static), e.g. ``jax.vmap(lambda k: nascell_init(k, ...))``.
  """
  shapes = _shapes(input_size, num_units, num_proj, use_bias)
  keys = jax.random.split(key, len(shapes))
  params = {}
  for k, (name, shape) in zip(keys, shapes.items()):
    init = _bias_init if name == "bias" else _kernel_init
    params[name] = init(k, shape, dtype)
  return params


def nascell_project(params: Params, x):
  """The input product ``x @ kernel`` ``(..., 8u)``: state-independent, so it can be computed for
  all time steps at once outside ``lax.scan`` and fed to :func:`nascell_step`."""
  return x @ params["kernel"]


def nascell_apply(params: Params, carry, x):
  """One NASCell step on plain dict params.

  Args:
    params: ``{"kernel", "recurrent_kernel"[, "bias"][, "projection"]}`` (see
      :func:`nascell_init`); the presence of ``bias`` / ``projection`` selects those options.
    carry: ``(c_prev (..., u), m_prev (..., u or num_proj))``.
    x: input ``(..., input_size)``.

  Returns:
    ``((c_new, m_new), m_new)``. Equals ``nascell_step(params, carry, nascell_project(params, x))``.
  """
  return nascell_step(params, carry, nascell_project(params, x))


def nascell_step(params: Params, carry, xk):
  """:func:`nascell_apply` with the input already projected (``xk = x @ kernel``).

  ``m_prev`` enters only the recurrent product, so variational dropout on the recurrent connection
  is ``carry = (c, m * mask)``.
  """
  c_prev, m_prev = carry
  xs = jnp.split(xk, NUM_BLOCKS, axis=-1)
  hr = m_prev @ params["recurrent_kernel"]
  if "bias" in params:
    hr = hr + params["bias"]
  hs = jnp.split(hr, NUM_BLOCKS, axis=-1)
  sig, relu, tanh = jax.nn.sigmoid, jax.nn.relu, jnp.tanh

  l0 = sig(xs[0] + hs[0])
  l1 = relu(xs[1] + hs[1])
  l2 = sig(xs[2] + hs[2])
  l3 = relu(xs[3] * hs[3])
  l4 = tanh(xs[4] + hs[4])
  l5 = sig(xs[5] + hs[5])
  l6 = tanh(xs[6] + hs[6])
  l7 = sig(xs[7] + hs[7])

  a = tanh(l0 * l1)
  b = tanh(l2 + l3)
  d = tanh(l4 * l5)
  e = sig(l6 + l7)

  a = tanh(a + c_prev)
  c_new = a * b
  f = tanh(d + e)
  m_new = tanh(c_new * f)
  if "projection" in params:
    m_new = m_new @ params["projection"]
  return (c_new, m_new), m_new


def nascell_zero_carry(batch_shape: tuple[int, ...], num_units: int, num_proj: int | None = None,
                       dtype=jnp.float32):
  """The zero state ``(c, m)`` for inputs with leading ``batch_shape``."""
  m_size = num_proj if num_proj is not None else num_units
  return (jnp.zeros(tuple(batch_shape) + (num_units,), dtype),
          jnp.zeros(tuple(batch_shape) + (m_size,), dtype))


class NASCell(nn.RNNCellBase):
  """The NASCell as a Flax linen RNN cell: ``cell(carry, x) -> ((c, m), m)``.

  Attributes:
    num_units: ``u``, the size of the cell state ``c`` (and of ``m`` without projection).
    num_proj: if set, ``m`` is projected to this size (param ``projection`` (u, num_proj)).
    use_bias: if True, a ``bias`` (8u,) is added to the recurrent product.

  Params (TF layout): ``kernel`` (input_size, 8u), ``recurrent_kernel`` (u or num_proj, 8u),
  ``bias`` (8u,), ``projection`` (u, num_proj). The maths is :func:`nascell_apply`.
  """
  num_units: int
  num_proj: int | None = None
  use_bias: bool = False

  @nn.compact
  def __call__(self, carry, x):
    shapes = _shapes(x.shape[-1], self.num_units, self.num_proj, self.use_bias)
    params = {name: self.param(name, _bias_init if name == "bias" else _kernel_init, shape,
                               jnp.float32)
              for name, shape in shapes.items()}
    return nascell_apply(params, carry, x)

  @nn.nowrap
  def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]):
    """Zero ``(c, m)`` for inputs of shape ``input_shape`` (batch dims = all but the last)."""
    del rng
    return nascell_zero_carry(tuple(input_shape[:-1]), self.num_units, self.num_proj)

  @property
  def num_feature_axes(self) -> int:
    return 1
