"""Training a child network and turning its validation accuracy into a reward.

The paper's recipe (Section 4.1): SGD with Nesterov momentum 0.9, learning rate 0.1, weight decay
1e-4, E epochs; reward = (max validation accuracy over the last 5 epochs) ** 3.

The ``exact`` executor compiles one program per distinct architecture at its exact shapes and keeps
it (in memory here, and in JAX's persistent compilation cache when the entry point enables it).
Training is a Python loop over a jitted step: on CPU a conv step inside ``lax.scan`` runs 13-15x
slower (measured on the project's 2-core machines). A child whose loss turns NaN/inf, or whose code raises, is returned as
failed with reward 0; the search goes on.

Everything an executor needs is in :func:`evaluate`'s arguments, so another executor (e.g. a
vmapped one) slots in behind the same signature.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import traceback
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nas_jax import data as data_lib


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Child-training hyperparameters (``config.child``).

  ``fast_compile`` compiles children with XLA's backend optimisation level 0: about 2-3x less
  compile time for a step that runs at about the same speed on small children (measured on the
  digits children on CPU), the right trade when a child trains for a few hundred steps only.
  """
  epochs: int = 50
  batch_size: int = 128
  learning_rate: float = 0.1
  momentum: float = 0.9
  nesterov: bool = True
  weight_decay: float = 1e-4
  reward_last_epochs: int = 5
  reward_power: float = 3.0
  eval_batch_size: int = 500
  fast_compile: bool = False


class ChildResult(NamedTuple):
  reward: float
  val_accuracy: float            # max over the last `reward_last_epochs` epochs
  val_accuracies: tuple          # per epoch
  param_count: int
  failed: bool
  error: str
  seconds: float
  metrics: dict | None = None    # executor-specific extras (e.g. perplexities), kept in history


def reward_from_accuracies(val_accuracies, cfg: TrainConfig) -> tuple[float, float]:
  """(reward, accuracy) with accuracy = max of the last k epochs and reward = accuracy ** power."""
  acc = float(max(val_accuracies[-cfg.reward_last_epochs:]))
  return acc ** cfg.reward_power, acc


def _make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  return optax.chain(
      optax.add_decayed_weights(cfg.weight_decay),
      optax.sgd(cfg.learning_rate, momentum=cfg.momentum, nesterov=cfg.nesterov))


class _Programs(NamedTuple):
  init: Any
  train_step: Any
  eval_step: Any


MAX_COMPILED = 64  # architectures kept compiled in memory (see _programs)


@functools.lru_cache(maxsize=MAX_COMPILED)
def _programs(model, cfg: TrainConfig, augment: bool) -> _Programs:
  """Jitted init / train step / eval step of one child model (cached per architecture).

  At most 64 architectures stay compiled in memory: each one's XLA:CPU code takes ~350 memory
  mappings, and a process may hold 65,530 (Linux's vm.max_map_count), which a search of ~190
  distinct children reached (LLVM then fails with "Cannot allocate memory"). An evicted
  architecture that comes back is reloaded from the persistent compilation cache.
  """
  tx = _make_optimizer(cfg)

  def init(key, x):
    # XLA's RngBitGenerator compiles ~3x faster than threefry for a net's worth of initialisers.
    key = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")
    variables = model.init(key, x, train=False)
    params = variables["params"]
    return params, variables.get("batch_stats", {}), tx.init(params)

  def train_step(params, batch_stats, opt_state, images, labels, idx_B, key, step):
    x, y = images[idx_B], labels[idx_B]
    if augment:
      x = data_lib.augment_batch(jax.random.fold_in(key, step), x)

    def loss_fn(p):
      logits, new_vars = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                     mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, new_vars.get("batch_stats", {})

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  def eval_step(params, batch_stats, images, labels, idx_B, valid_B):
    logits = model.apply({"params": params, "batch_stats": batch_stats}, images[idx_B])
    return jnp.sum((jnp.argmax(logits, -1) == labels[idx_B]) & valid_B)

  opts = {"xla_backend_optimization_level": 0} if cfg.fast_compile else None
  return _Programs(jax.jit(init, compiler_options=opts),
                   jax.jit(train_step, donate_argnums=(0, 1, 2), compiler_options=opts),
                   jax.jit(eval_step, compiler_options=opts))


def _accuracy(progs, params, batch_stats, images, labels, batch_size) -> float:
  n = images.shape[0]
  bs = min(batch_size, n)
  correct = 0
  for start in range(0, n, bs):
    idx = np.arange(start, start + bs)
    valid = idx < n
    correct += progs.eval_step(params, batch_stats, images, labels, np.minimum(idx, n - 1), valid)
  return float(correct) / n


def failed_result(e: Exception, val_accuracies=(), param_count: int = 0,
                  seconds: float = 0.0) -> ChildResult:
  """A failed child (reward 0) whose error text is ``e``'s, with its traceback's last frames."""
  error = f"{type(e).__name__}: {e}"
  if not isinstance(e, FloatingPointError) and e.__traceback__ is not None:
    error += "\n" + "".join(traceback.format_exception(e, limit=-3))
  return ChildResult(0.0, 0.0, tuple(val_accuracies), param_count, True, error, seconds)


def evaluate(model, dataset: data_lib.Dataset, cfg: TrainConfig, key: jax.Array, *,
             log_fn=None) -> ChildResult:
  """Trains ``model`` on ``dataset.train`` and returns its reward from ``dataset.val``.

  Args:
    model: a Flax module taking (images, train=bool) and returning logits; must be hashable (all
      built-in search spaces give frozen modules), as compiled programs are cached per model.
    dataset: train/validation arrays (see ``nas_jax.data``).
    cfg: training hyperparameters.
    key: PRNG key; the same key gives the same result.
    log_fn: optional callable(str) for per-epoch progress.

  Returns:
    A :class:`ChildResult`; ``failed`` is True (reward 0) when the loss became NaN/inf or
    training raised, with the error text in ``error``.
  """
  t0 = time.time()
  param_count = 0
  val_accs: list[float] = []
  try:
    progs = _programs(model, cfg, bool(dataset.augment))
    init_key, data_key, aug_key = jax.random.split(key, 3)
    train_x, train_y = jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels)
    val_x, val_y = jnp.asarray(dataset.val_images), jnp.asarray(dataset.val_labels)
    params, batch_stats, opt_state = progs.init(init_key, train_x[:1])
    param_count = int(sum(p.size for p in jax.tree.leaves(params)))
    n = train_x.shape[0]
    bs = min(cfg.batch_size, n)
    steps_per_epoch = n // bs
    rng = np.random.default_rng(np.asarray(jax.random.key_data(data_key)).ravel().tolist())
    step = 0
    for epoch in range(cfg.epochs):
      perm = rng.permutation(n)
      loss = None
      for b in range(steps_per_epoch):
        params, batch_stats, opt_state, loss = progs.train_step(
            params, batch_stats, opt_state, train_x, train_y, perm[b * bs:(b + 1) * bs],
            aug_key, step)
        step += 1
      if not np.isfinite(float(loss)):
        raise FloatingPointError(f"training loss became {float(loss)} in epoch {epoch + 1}")
      val_accs.append(_accuracy(progs, params, batch_stats, val_x, val_y, cfg.eval_batch_size))
      if log_fn:
        log_fn(f"  epoch {epoch + 1}/{cfg.epochs} loss {float(loss):.4f} val_acc {val_accs[-1]:.4f}")
  except Exception as e:  # pylint: disable=broad-except
    return failed_result(e, tuple(val_accs), param_count, time.time() - t0)
  reward, acc = reward_from_accuracies(val_accs, cfg)
  return ChildResult(reward, acc, tuple(val_accs), param_count, False, "", time.time() - t0)
