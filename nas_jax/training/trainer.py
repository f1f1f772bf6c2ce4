"""The child training loop: what every child trainer returns, and the pieces of training they share.

A child's evaluation ends in a :class:`ChildResult`: its reward and a ``metrics`` dict written into
its history row as it is (``val_accuracy`` and ``val_accuracies`` for image classifiers,
``val_ppl`` and ``train_ppl`` for language models; which one ranks children is the evaluator's
``metric``).

Two loops train every child, each a Python loop over jitted steps, with an optional leading
*children* axis (m children vmapped in one program, optionally split over devices):

* image classifiers (:func:`classifier_programs`, :func:`fit_classifiers`): any model given as
  ``(init, apply)``, trained with the paper's SGD (:func:`nas_jax.training.optim.child_optimizer`, Section 4.1); the exact
  children of ``child.py`` (one architecture per program) and the masked children of
  ``masked_children.py`` (m architectures as arrays);
* language models (:func:`lm_epoch`, :func:`lm_nll`): truncated BPTT over the given step
  functions (``lm.make_train_step``: its update is inside the step), for ``lm.train`` and the
  m cells of ``cell_children.py``.

Conv training stays a Python loop: on CPU a conv step inside ``lax.scan`` runs 13-15x slower
(measured on the project's 2-core machines). A child whose loss becomes NaN/inf fails with the one
error of :func:`diverged`; the children beside it keep training.
"""

from __future__ import annotations

import functools
import os
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nas_jax.training import data as data_lib, optim, ptb

if TYPE_CHECKING:
  from nas_jax.training.child import TrainConfig


# Options of XLA:CPU (jaxlib 0.10) for programs that train or evaluate conv children, each
# measured on the 2-core machine (benchmarks/README.md):
# - XLA hands dots, convolutions and reductions to YNNPACK by default, whose convolutions here run
#   ~1.5x slower than XLA's own multi-threaded (Eigen) ones: one SGD step of a 6-layer child of
#   the paper's space, batch 64, 88 ms against 57 ms, and 22 s against 17-18 s for 4 such
#   children trained on digits. So conv programs keep YNNPACK's dots and reductions only.
# - XLA's new (MLIR) fusion emitters compile a child's elementwise fusions ~1.6x slower than the
#   older emitters, for steps no faster: 8 new children of the paper's space compiled in 19.3 s
#   against 11.5 s, and 13.5 s against 4.2 s for 16 of cnn_digits; peak memory 1.1 GB -> 0.8 GB.
# NAS_JAX_YNN_CONVOLUTIONS=1 keeps XLA's defaults; an option a jaxlib lacks is left out.
_CPU_CONV_OPTIONS = ({"xla_cpu_experimental_ynn_fusion_type":
                      "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"},
                     {"xla_cpu_use_fusion_emitters": False})


@functools.cache
def _cpu_conv_options() -> dict[str, Any]:
  """The options of ``_CPU_CONV_OPTIONS`` that the installed XLA accepts."""
  supported = {}
  for option in _CPU_CONV_OPTIONS:
    try:
      jax.jit(lambda x: x + 1, compiler_options=option).lower(np.float32(0)).compile()
    except jax.errors.JaxRuntimeError:  # an XLA without the option (or without that enum value)
      continue
    supported.update(option)
  return supported


def conv_compiler_options(fast_compile: bool) -> dict[str, Any] | None:
  """The ``compiler_options`` of a program that trains or evaluates conv children.

  ``fast_compile``: XLA's backend optimisation level 0 (see ``TrainConfig``). On the CPU backend,
  convolutions by XLA's own kernels rather than YNNPACK's, and fusions by XLA's older emitters,
  which compile faster (``_CPU_CONV_OPTIONS``).
  """
  opts: dict[str, Any] = {"xla_backend_optimization_level": 0} if fast_compile else {}
  if jax.default_backend() == "cpu" and not os.environ.get("NAS_JAX_YNN_CONVOLUTIONS"):
    opts.update(_cpu_conv_options())
  return opts or None


class ChildResult(NamedTuple):
  reward: float
  metrics: dict          # JSON values, copied into the history row (e.g. val_accuracy)
  param_count: int
  failed: bool
  error: str
  seconds: float


def failed_result(e: BaseException, metrics: dict | None = None, param_count: int = 0,
                  seconds: float = 0.0) -> ChildResult:
  """A failed child (reward 0) whose error text is ``e``'s, with its traceback's last frames."""
  error = f"{type(e).__name__}: {e}"
  if not isinstance(e, FloatingPointError) and e.__traceback__ is not None:
    error += "\n" + "".join(traceback.format_exception(e, limit=-3))
  return ChildResult(0.0, dict(metrics or {}), param_count, True, error, seconds)


def diverged(loss, epoch: int, what: str = "training loss") -> list[FloatingPointError | None]:
  """Per child of ``loss`` (a scalar, or shape (m,)): the error of a non-finite loss, else None."""
  return [None if np.isfinite(v) else
          FloatingPointError(f"{what} became {float(v)} in epoch {epoch}")
          for v in np.atleast_1d(np.asarray(loss))]


def check_finite(loss, epoch: int, what: str = "training loss") -> None:
  """Raises :func:`diverged`'s FloatingPointError if the scalar ``loss`` is not finite."""
  error, = diverged(loss, epoch, what)
  if error is not None:
    raise error


def reward_from_accuracies(val_accuracies, cfg: TrainConfig) -> tuple[float, float]:
  """(reward, accuracy) with accuracy = max of the last k epochs and reward = accuracy ** power.

  The paper's reward (Section 4.1): the maximum validation accuracy of the last 5 epochs, cubed.
  """
  acc = float(max(val_accuracies[-cfg.reward_last_epochs:]))
  return acc ** cfg.reward_power, acc


def steps_per_epoch(dataset: data_lib.Dataset, cfg: TrainConfig) -> int:
  """Minibatches per epoch of :func:`fit_classifiers` (the last partial batch is dropped)."""
  n = dataset.train_images.shape[0]
  return n // min(cfg.batch_size, n)


def children_mesh(devices: Sequence) -> jax.sharding.Mesh:
  """A 1-D mesh over ``devices`` whose axis ("children") the children of a step are split on."""
  return jax.sharding.Mesh(np.asarray(devices), ("children",))


def children_map(fn: Callable, in_axes: tuple, devices: Sequence = ()) -> Callable:
  """``jax.vmap(fn, in_axes)``; with several ``devices`` the children axis is split over them.

  Each device runs the vmapped ``fn`` on its m / len(devices) children (``shard_map``, no
  communication: children share nothing but the replicated arguments, those of axis None); m
  must be a multiple of ``len(devices)``. Every output has the children axis.
  """
  return on_devices(jax.vmap(fn, in_axes=in_axes), devices,
                    "".join("r" if a is None else "c" for a in in_axes), "c")


def on_devices(fn: Callable, devices: Sequence, in_specs: str, out_specs: str,
               gather: bool = False) -> Callable:
  """``fn`` as ``jax.shard_map`` over the children mesh of ``devices`` (one device: ``fn``).

  One letter per argument in ``in_specs`` and per output in ``out_specs``: ``c`` split on the
  children axis, ``r`` replicated. With ``gather`` each device's outputs are ``all_gather``-ed
  along the children axis first, so every device (and process) holds all of them (``r``).
  """
  if len(devices) <= 1:
    return fn
  spec = {"c": jax.sharding.PartitionSpec("children"), "r": jax.sharding.PartitionSpec()}
  body = fn
  if gather:
    body = lambda *a: jax.tree.map(lambda x: jax.lax.all_gather(x, "children", tiled=True),
                                   fn(*a))
  outs = tuple(spec[ch] for ch in out_specs)
  return jax.shard_map(body, mesh=children_mesh(devices), in_specs=tuple(spec[ch] for ch in
                                                                         in_specs),
                       out_specs=outs if len(outs) > 1 else outs[0], check_vma=False)


class Programs(NamedTuple):
  """Jitted programs of a classifier (with children: leading axis m on every per-child argument)."""
  init: Any         # (key, init_input) -> params, batch_stats, opt_state
  train_step: Any   # (params, batch_stats, opt_state, arch, images, labels, idx_B, key, step)
                    #   -> params, batch_stats, opt_state, loss
  eval_step: Any    # (params, batch_stats, arch, images, labels, idx_B, valid_B) -> correct


def classifier_programs(init: Callable, apply: Callable, cfg: TrainConfig, augment: bool, *,
                        children: bool = False, devices: Sequence = (),
                        steps_per_epoch: int | None = None) -> Programs:
  """Jitted init / train step / eval step of an image classifier given as pure functions.

  Args:
    init: ``(key, init_input) -> (params, batch_stats)``.
    apply: ``(params, batch_stats, arch, x_BxHxWxC, train, rng) -> (logits_BxK, batch_stats)``,
      the batch statistics updated when ``train``; ``arch`` is the child's architecture as arrays
      (None for a model built for one architecture); ``rng``: in training a key of its own per
      step (``fold_in(fold_in(key, step), 1)``; augmentation has ``fold_in(key, step)``) for the
      model's stochastic layers (dropout, ...), None in evaluation.
    cfg: training hyperparameters (optimiser, ``fast_compile``).
    augment: apply ``data.augment_batch`` to every training batch.
    children: vmap every program over a leading children axis (``init_input``, ``arch``, keys,
      batch indices and the state have it; the images, labels and step do not).
    devices: with ``children``, split the children axis over these devices (:func:`children_map`).
    steps_per_epoch: minibatches per epoch (:func:`steps_per_epoch`), for a learning-rate
      schedule other than ``"constant"``.

  Returns:
    :class:`Programs`. A step computes the softmax cross-entropy of one batch of
    ``images[idx_B]`` and one update of :func:`nas_jax.training.optim.child_optimizer`; the train step donates its state.
  """
  tx = optim.child_optimizer(cfg, steps_per_epoch)

  def init_state(key, init_input):
    params, batch_stats = init(key, init_input)
    return params, batch_stats, tx.init(params)

  def train_step(params, batch_stats, opt_state, arch, images, labels, idx_B, key, step):
    x, y = images[idx_B], labels[idx_B]
    if augment:
      x = data_lib.augment_batch(jax.random.fold_in(key, step), x)

    rng = jax.random.fold_in(jax.random.fold_in(key, step), 1)

    def loss_fn(p):
      logits, new_stats = apply(p, batch_stats, arch, x, True, rng)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_stats

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  def eval_step(params, batch_stats, arch, images, labels, idx_B, valid_B):
    logits, _ = apply(params, batch_stats, arch, images[idx_B], False, None)
    return jnp.sum((jnp.argmax(logits, -1) == labels[idx_B]) & valid_B)

  if children:
    init_state = children_map(init_state, (0, 0), devices)
    train_step = children_map(train_step, (0, 0, 0, 0, None, None, 0, 0, None), devices)
    eval_step = children_map(eval_step, (0, 0, 0, None, None, None, None), devices)
  opts = conv_compiler_options(cfg.fast_compile)
  return Programs(jax.jit(init_state, compiler_options=opts),
                  jax.jit(train_step, donate_argnums=(0, 1, 2), compiler_options=opts),
                  jax.jit(eval_step, compiler_options=opts))


def accuracy(progs: Programs, params, batch_stats, arch, images, labels,
             batch_size: int) -> np.ndarray:
  """Fraction of ``images`` classified right (per child with a children axis), in batches."""
  n = images.shape[0]
  bs = min(batch_size, n)
  correct = 0
  for start in range(0, n, bs):
    idx = np.arange(start, start + bs)
    correct = correct + progs.eval_step(params, batch_stats, arch, images, labels,
                                        np.minimum(idx, n - 1), idx < n)
  return np.asarray(correct) / n


def host_rng(key: jax.Array) -> np.random.Generator:
  """A NumPy generator seeded by a JAX key's bits: host-side draws that follow the key."""
  return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


class Fit(NamedTuple):
  val_accuracies: list   # per child: the validation accuracy of each epoch it finished
  errors: list           # per child: the exception that ended its training, or None
  param_count: int       # parameters of one child's network as trained


class Epoch(NamedTuple):
  """What :func:`train_epochs` yields after each epoch."""
  number: int      # from 1
  state: tuple     # (params, batch_stats, opt_state) after the epoch
  losses: list     # each minibatch's training loss, in order (device arrays)
  started: float   # time.time() when the epoch began


def train_epochs(progs: Programs, state: tuple, cfg: TrainConfig, train_x, train_y,
                 orders: Callable[[int], Sequence[np.ndarray]], aug_keys, *, arch=None,
                 first: int = 1, children: bool = False) -> Iterator[Epoch]:
  """The classifier epoch loop (the search's children and the final training alike).

  Epochs ``first`` .. ``cfg.epochs``: the minibatches of ``cfg.batch_size`` (the last partial
  one dropped) of ``orders(epoch)``, one permutation of the training set per child, each one
  ``progs.train_step`` (global step ``(epoch - 1) * steps_per_epoch + b``, which schedules and
  augmentation read). After each epoch it yields an :class:`Epoch`: the caller's per-epoch hook
  (score, check, checkpoint, log) is the body of its ``for`` loop, which may stop by leaving it.
  """
  n = train_x.shape[0]
  bs = min(cfg.batch_size, n)
  params, batch_stats, opt_state = state
  for epoch in range(first, cfg.epochs + 1):
    started, perms, losses = time.time(), orders(epoch), []
    for b in range(n // bs):
      idx = [perm[b * bs:(b + 1) * bs] for perm in perms]
      params, batch_stats, opt_state, loss = progs.train_step(
          params, batch_stats, opt_state, arch, train_x, train_y,
          np.stack(idx) if children else idx[0], aug_keys, (epoch - 1) * (n // bs) + b)
      losses.append(loss)
    yield Epoch(epoch, (params, batch_stats, opt_state), losses, started)


def fit_classifiers(programs: Callable[[], Programs], dataset: data_lib.Dataset, cfg: TrainConfig,
                    keys: Sequence[jax.Array], *, arch=None, init_input=None,
                    children: bool = False, num_children: int | None = None,
                    log_fn: Callable[[str], None] | None = None) -> Fit:
  """Trains classifiers for ``cfg.epochs`` epochs and records each epoch's validation accuracy.

  Per child (paper, Section 4.1): ``cfg.epochs`` epochs over a random permutation of the training
  set drawn from the child's key, minibatches of ``cfg.batch_size`` (the last partial one
  dropped), then the accuracy on the validation set. A child whose last loss of an epoch is not
  finite stops with :func:`diverged`'s error while the others go on; an exception (in compiling,
  say) stops every child.

  Args:
    programs: returns the :class:`Programs` (called inside the error handling: a model that
      cannot be compiled fails its children).
    dataset: train/validation arrays (see ``nas_jax.training.data``).
    cfg: training hyperparameters.
    keys: one PRNG key per child (one without ``children``); the same key gives the same child.
    arch: the programs' ``arch`` argument (children: stacked on the children axis).
    init_input: the init program's second argument (default: one training image).
    children: the programs have a children axis (``classifier_programs(children=True)``).
    num_children: children whose results count (default: all); the others pad the children axis
      to a multiple of the devices and are ignored.
    log_fn: optional callable(str) for per-epoch progress.

  Returns:
    A :class:`Fit` of the first ``num_children`` children.
  """
  m = len(keys) if num_children is None else num_children
  val_accs: list[list[float]] = [[] for _ in range(m)]
  errors: list = [None] * m
  param_count = 0
  try:
    progs = programs()
    splits = [jax.random.split(key, 3) for key in keys]
    if children:
      init_keys, data_keys, aug_keys = (jnp.stack(k) for k in zip(*splits))
    else:
      (init_keys, data_key, aug_keys), = splits
      data_keys = [data_key]
    train_x, train_y = jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels)
    val_x, val_y = jnp.asarray(dataset.val_images), jnp.asarray(dataset.val_labels)
    params, batch_stats, opt_state = progs.init(
        init_keys, train_x[:1] if init_input is None else init_input)
    param_count = int(sum(p.size for p in jax.tree.leaves(params))) // len(keys)
    n = train_x.shape[0]
    rngs = [host_rng(k) for k in data_keys]
    for ep in train_epochs(progs, (params, batch_stats, opt_state), cfg, train_x, train_y,
                           lambda epoch: [rng.permutation(n) for rng in rngs], aug_keys,
                           arch=arch, children=children):
      epoch, (params, batch_stats, opt_state) = ep.number, ep.state
      loss = np.atleast_1d(np.asarray(ep.losses[-1]))
      errors = [d if e is None else e for e, d in zip(errors, diverged(loss[:m], epoch))]
      if all(errors):
        break
      accs = np.atleast_1d(accuracy(progs, params, batch_stats, arch, val_x, val_y,
                                    cfg.eval_batch_size))
      for k in range(m):
        if errors[k] is None:
          val_accs[k].append(float(accs[k]))
      if log_fn:
        log_fn(f"  epoch {epoch}/{cfg.epochs} loss {_rounded(loss[:m], children)} "
               f"val_acc {_rounded(accs[:m], children)}")
  except Exception as e:  # pylint: disable=broad-except
    errors = [e] * m
  return Fit(val_accs, errors, param_count)


def _rounded(values, children: bool) -> str:
  return str(np.round(values, 4).tolist()) if children else f"{float(values[0]):.4f}"


def classifier_results(fit: Fit, cfg: TrainConfig, seconds: float,
                       param_counts: Sequence[int] | None = None) -> list[ChildResult]:
  """One :class:`ChildResult` per child of ``fit``: the paper's reward, or failed (reward 0).

  ``metrics`` holds ``val_accuracy`` (the accuracy the reward is from; 0 when failed) and
  ``val_accuracies`` (per finished epoch); ``param_counts`` replaces ``fit.param_count``.
  """
  results = []
  for k, (accs, error) in enumerate(zip(fit.val_accuracies, fit.errors)):
    count = fit.param_count if param_counts is None else param_counts[k]
    if error is not None:
      metrics = {"val_accuracy": 0.0, "val_accuracies": list(accs)}
      results.append(failed_result(error, metrics, count, seconds))
    else:
      reward, acc = reward_from_accuracies(accs, cfg)
      results.append(ChildResult(reward, {"val_accuracy": acc, "val_accuracies": list(accs)},
                                 count, False, "", seconds))
  return results


def lm_epoch(train_step: Callable, params, ops, carry, stream_BxN: np.ndarray, cfg, lr: float,
             drop_key: jax.Array, step: int, *, children: bool = False) -> tuple[Any, list, int]:
  """One epoch of truncated BPTT (Zaremba et al. 2014): ``train_step`` over the stream's segments.

  Args:
    train_step: ``(params, ops, carry, inputs_BxT, targets_BxT, lr, key) -> (params, carry,
      nll_sum)``, jitted (``lm.make_train_step``; with ``children``, vmapped over the children
      axis of params, ops, carry and key).
    params, ops, carry: the model's state at the start of the epoch; ``carry`` is donated.
    stream_BxN: ``ptb.batchify``'d training ids, read in ``cfg.bptt`` windows, state carried.
    cfg: the ``lm.LMConfig`` (``bptt``; dropout on when ``dropout`` or ``embed_dropout``).
    lr: the epoch's learning rate.
    drop_key: the dropout key (children: one per child); step k's key is
      ``fold_in(drop_key, k)``.
    step: steps taken before this epoch.
    children: the state and keys have a children axis.

  Returns:
    (params, the NLL sum of every segment as device arrays, step after the epoch).
  """
  use_dropout = cfg.dropout > 0 or cfg.embed_dropout > 0
  fold = jax.vmap(jax.random.fold_in, in_axes=(0, None)) if children else jax.random.fold_in
  nlls = []
  for x, y in ptb.segments(stream_BxN, cfg.bptt):
    key = fold(drop_key, step) if use_dropout else None
    params, carry, nll = train_step(params, ops, carry, x, y, lr, key)
    nlls.append(nll)
    step += 1
  return params, nlls, step


def lm_nll(eval_step: Callable, params, ops, carry, stream_BxN: np.ndarray,
           bptt: int) -> tuple[list, int]:
  """(NLL sum of each segment, as device arrays; number of targets) over every target of the
  stream, state carried (``eval_step``: ``(params, ops, carry, inputs, targets) -> (carry,
  nll_sum)``). The caller sums: on the host in float64, or on the device without waiting."""
  nlls, count = [], 0
  for x, y in ptb.segments(stream_BxN, bptt, keep_partial=True):  # every target counted once
    carry, nll = eval_step(params, ops, carry, x, y)
    nlls.append(nll)
    count += y.size
  return nlls, count


def flops(module, variables, input_shape: Sequence[int]) -> int:
  """XLA's FLOP count of one image's inference forward pass (a multiply-add is 2 FLOPs; the taps of a SAME-padded convolution
  that fall on the padding are not counted)."""
  x = jnp.zeros((1, *input_shape), jnp.float32)
  cost = jax.jit(lambda v, x: module.apply(v, x)).lower(variables, x).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0]
  return int(cost.get("flops", 0))
