"""Training a child network and turning its validation accuracy into a reward.

The paper's recipe (Section 4.1): SGD with Nesterov momentum 0.9, learning rate 0.1, weight decay
1e-4, E epochs; reward = (max validation accuracy over the last 5 epochs) ** 3.

The ``exact`` executor compiles one program per distinct architecture at its exact shapes and keeps
it (in memory here, and in JAX's persistent compilation cache when the entry point enables it); the
training loop is :func:`nas_jax.training.trainer.fit_classifiers`. A child whose loss turns NaN/inf,
or whose code raises, is returned as failed with reward 0; the search goes on.

Everything an executor needs is in :func:`evaluate`'s arguments, so another executor (e.g. a
vmapped one) slots in behind the same signature.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os
import threading
import time
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nas_jax.training import data as data_lib, optim, trainer


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Child-training hyperparameters (``config.child``).

  ``fast_compile`` compiles children with XLA's backend optimisation level 0: less compile time
  for a slower step. On the 2-core CPU it pays for the small children of the ``cnn_digits`` space
  (4 new children: 6.5 s against 7.5 s with XLA's default, 80 steps each) but not for the
  paper's 6-layer children of 24-64 filters, whose steps run 1.4x faster at the default level and
  which then finish sooner even when new (4 new children: 24.1 s against 25.7 s).

  ``lr_schedule``: ``"constant"`` (``learning_rate`` throughout: what a search's short child
  training uses), ``"step"`` (DenseNet's recipe, which the paper's child training follows:
  ``learning_rate`` divided by 10 at 50% and again at 75% of the epochs) or ``"cosine"`` (cosine
  decay to 0 over the epochs, per step).
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
  lr_schedule: str = "constant"


MAX_COMPILED = 16  # architectures kept compiled in memory (see _programs)

RNG_COLLECTIONS = ("dropout",)
"""The PRNG streams a child gets in training (``nn.Dropout`` draws from ``"dropout"``); a model
that draws from others names them in its ``rng_collections`` attribute (e.g. ``("noise",)``)."""


def rng_streams(model, rng: jax.Array) -> dict[str, jax.Array]:
  """``{name: key}`` for every stream the model may draw from in a training step, from ``rng``."""
  names = RNG_COLLECTIONS + tuple(n for n in getattr(model, "rng_collections", ())
                                  if n not in RNG_COLLECTIONS)
  return {name: jax.random.fold_in(rng, i) for i, name in enumerate(names)}


@functools.lru_cache(maxsize=MAX_COMPILED)
def _programs(model, cfg: TrainConfig, augment: bool,
              steps_per_epoch: int | None = None) -> trainer.Programs:
  """Jitted init / train step / eval step of one child model (cached per architecture).

  At most ``MAX_COMPILED`` (16) architectures stay compiled in memory. Each one's XLA:CPU code
  takes ~350 memory mappings, and a process may hold 65,530 (Linux's vm.max_map_count), which a
  search of ~190 distinct children reached (LLVM then fails with "Cannot allocate memory"); and
  each holds ~15-25 MB: the main job (128 children, all distinct) peaked at 1.78 GB of resident
  memory with 64 kept, 1.32 GB with 16, in the same time (337 s, 331 s). A search rarely
  meets an architecture again; one that comes back is reloaded from the persistent compilation
  cache.
  """

  def init(key, x):
    # XLA's RngBitGenerator compiles ~3x faster than threefry for a net's worth of initialisers.
    key = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")
    variables = model.init(key, x, train=False)
    return variables["params"], variables.get("batch_stats", {})

  def apply(params, batch_stats, arch, x, train, rng):
    del arch  # the model is built for its architecture
    variables = {"params": params, "batch_stats": batch_stats}
    if not train:
      return model.apply(variables, x), batch_stats
    logits, new_vars = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                   rngs=rng_streams(model, rng))
    return logits, new_vars.get("batch_stats", {})

  progs = trainer.classifier_programs(init, apply, cfg, augment, steps_per_epoch=steps_per_epoch)
  if getattr(model, "default_initializers", False):  # no init program to compile (jit is lazy)
    tx = optim.child_optimizer(cfg, steps_per_epoch)
    progs = progs._replace(init=functools.partial(_host_init_state, model, tx))
  return progs


# Flax's default initialisers of nn.Conv / nn.Dense / nn.BatchNorm, by variable name.
_DEFAULT_INITIALIZERS = {("params", "kernel"): "lecun_normal", ("params", "bias"): "zeros",
                         ("params", "scale"): "ones", ("batch_stats", "mean"): "zeros",
                         ("batch_stats", "var"): "ones"}
_TRUNCATED_STD = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]


def host_init(model, key: jax.Array, x) -> dict:
  """``model.init(key, x, train=False)``'s variables drawn on the host with NumPy, for a model
  whose every variable comes from the default initialiser of Flax's ``nn.Conv``, ``nn.Dense`` or
  ``nn.BatchNorm`` (a kernel: LeCun normal, i.e. truncated to 2 std and scaled by 1/sqrt(fan-in);
  biases and means: 0; scales and variances: 1).

  Same distribution as ``model.init``, not the same numbers; the same key gives the same
  variables. It costs no compilation: on the 2-core CPU a paper-space child's jitted init program
  takes ~0.85 s to compile, about a third of the child's compile time, and every architecture of a
  search is a new program. A model opts in with a class attribute ``default_initializers = True``
  (as ``CNNChild`` does); a variable of another name raises ``ValueError``.
  """
  shapes = jax.eval_shape(lambda k: model.init(k, x, train=False), key)
  rng = trainer.host_rng(key)

  def draw(path, leaf):
    names = (path[0].key, path[-1].key)
    kind = _DEFAULT_INITIALIZERS.get(names)
    if kind is None:
      raise ValueError(f"{type(model).__name__}.default_initializers: variable "
                       f"{jax.tree_util.keystr(path)} is none of Flax's Conv/Dense/BatchNorm "
                       "variables; remove default_initializers to use model.init")
    if kind == "zeros":
      return np.zeros(leaf.shape, leaf.dtype)
    if kind == "ones":
      return np.ones(leaf.shape, leaf.dtype)
    z = rng.standard_normal(leaf.shape)
    while (out := np.abs(z) > 2).any():  # redraw outside 2 std: a truncated normal
      z[out] = rng.standard_normal(int(out.sum()))
    fan_in = math.prod(leaf.shape[:-1])
    return (z / (_TRUNCATED_STD * math.sqrt(fan_in))).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _host_init_state(model, tx, key, x):
  """The init program's (params, batch_stats, opt_state), from :func:`host_init`.

  The optimiser state of ``optim.child_optimizer`` is all zeros (momenta, step count;
  tests/test_child.py checks it for each schedule): made on the host too, as eager ``tx.init``
  dispatches one op per variable (~0.2 s a child).
  """
  variables = host_init(model, key, x)
  params = variables["params"]
  opt_state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(tx.init, params))
  # On x's device, committed as the train step's outputs will be: a first step on uncommitted
  # state would compile the train step a second time for the steps after it.
  where = x.sharding if isinstance(x, jax.Array) else jax.local_devices()[0]
  return jax.device_put((params, variables.get("batch_stats", {}), opt_state), where)


def evaluate(model, dataset: data_lib.Dataset, cfg: TrainConfig, key: jax.Array, *,
             log_fn=None) -> trainer.ChildResult:
  """Trains ``model`` on ``dataset.train`` and returns its reward from ``dataset.val``.

  Args:
    model: a Flax module taking (images, train=bool) and returning logits; must be hashable (all
      built-in search spaces give frozen modules), as compiled programs are cached per model.
    dataset: train/validation arrays (see ``nas_jax.training.data``).
    cfg: training hyperparameters.
    key: PRNG key; the same key gives the same result.
    log_fn: optional callable(str) for per-epoch progress.

  Returns:
    A :class:`~nas_jax.training.trainer.ChildResult` whose ``metrics`` hold ``val_accuracy`` and
    ``val_accuracies``; ``failed`` is True (reward 0) when the loss became NaN/inf or training
    raised, with the error text in ``error``.
  """
  t0 = time.time()
  steps = trainer.steps_per_epoch(dataset, cfg)
  fit = trainer.fit_classifiers(lambda: _programs(model, cfg, bool(dataset.augment), steps),
                                dataset, cfg, [key], log_fn=log_fn)
  return trainer.classifier_results(fit, cfg, time.time() - t0)[0]


def parallel_children(requested: int = 0) -> int:
  """Children to train side by side on one device: ``requested``, or for 0 the CPU backend's
  cores this process may use (1 on an accelerator, whose one program fills it)."""
  if requested:
    return requested
  if jax.default_backend() != "cpu":
    return 1
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def in_order(futures: Sequence[concurrent.futures.Future]) -> Iterator:
  """The futures' results in order (so a caller records each as soon as it and those before it
  are done). Closing the iterator early (an error, Ctrl-C) cancels the ones not started yet."""
  try:
    for f in futures:
      yield f.result()
  finally:
    for f in futures:
      f.cancel()


def evaluate_many(models: Sequence, dataset: data_lib.Dataset, cfg: TrainConfig,
                  keys: Sequence[jax.Array], *, workers: int = 1, log_fn=None,
                  evaluate_fn: Callable | None = None) -> Iterator[trainer.ChildResult]:
  """:func:`evaluate` of each model with its key, ``workers`` of them training at once on the
  default device (threads: JAX releases the GIL while XLA computes); results in order.

  On a CPU one child's compiling (single-threaded, ~1.5 s for a digits child) then overlaps
  another's training: a search's new architectures train ~1.2x faster with 2 workers on 2 cores
  (benchmarks/README.md). Compiled children that train side by side gain nothing there: their
  convolutions already use every core. Each child's result depends on its key only, not on the
  others. ``evaluate_fn(model, dataset, key)`` replaces :func:`evaluate` (the exact evaluator's,
  which also fails a model that is an error).
  """
  def one(model, key):
    if evaluate_fn is not None:
      return evaluate_fn(model, dataset, key)
    return evaluate(model, dataset, cfg, key, log_fn=log_fn)

  if workers <= 1 or len(models) <= 1:
    for model, key in zip(models, keys):
      yield one(model, key)
    return
  pool = concurrent.futures.ThreadPoolExecutor(min(workers, len(models)),
                                              thread_name_prefix="child")
  try:
    yield from in_order([pool.submit(one, model, key) for model, key in zip(models, keys)])
  finally:
    # Ctrl-C can drop this generator where the last reference goes, a worker thread included:
    # that thread must not wait for itself ("cannot join current thread").
    pool.shutdown(wait=not threading.current_thread().name.startswith("child_"),
                  cancel_futures=True)
