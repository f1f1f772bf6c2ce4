"""The weight-sharing search's settings and the protocol of its executors, in one place.

:class:`SharedConfig` is ``config.shared``: the schedule of :mod:`nas_jax.core.shared_search`
and the shared weights' optimiser. An *executor* trains and scores the children of one space
under shared weights; the search loop knows nothing else of the space's networks. Two live in
this package: :class:`nas_jax.training.shared_cnn.Executor` (the CNN space: one max-size masked
network; values are validation accuracies) and :class:`nas_jax.training.shared_rnn.Executor`
(the recurrent-cell space: one language model whose leaf projections every cell shares; values
are validation perplexities). A space of one's own brings its executor class the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol, Sequence

import jax
import numpy as np
from absl import logging

from nas_jax.errors import ConfigError
from nas_jax.spaces import base
from nas_jax.spaces.cnn import CNNSpace
from nas_jax.spaces.enas_cell import ENASCellSpace
from nas_jax.spaces.rnn_cell import RNNCellSpace


LR_SCHEDULES = ("constant", "cosine", "sgdr")


@dataclasses.dataclass(frozen=True)
class SharedConfig:
  """``config.shared``: the weight-sharing (ENAS, Pham et al. 2018) search and its schedule.

  With ``enabled`` the search trains one max-size network whose weights every child shares
  (:mod:`nas_jax.core.shared_search`) instead of training each child from scratch. Each of
  ``epochs`` phases: (a) ``train_steps`` minibatches (0: one pass over the training set) of
  ``batch_size`` images train the shared weights, each on ``children_per_batch`` freshly sampled
  architectures (their gradients averaged); (b) ``controller_steps`` searcher updates, each on
  ``search.children_per_step`` architectures scored on one validation minibatch of
  ``eval_batch_size`` (reward = accuracy ** ``reward_power``). Then (c) derive:
  ``derive_samples`` architectures scored on the whole validation set; the best and the
  ``derive_top_k`` best (unique) go into ``summary.json``. The shared weights train with SGD
  (Nesterov ``momentum``, ``weight_decay``, gradient norm clipped at ``grad_clip``, 0 = off) at
  ``learning_rate`` under ``lr_schedule``: constant, cosine (to ``lr_min`` over all the
  training steps) or sgdr (cosine restarts, first period ``lr_t0`` epochs, each next one
  ``lr_t_mul`` times longer: ENAS's). ``search.num_steps`` is not used.

  Devices (TuNAS's layout, Bender et al. 2020): the minibatch is split among the
  ``children_per_batch`` architectures, each training on its ``batch_size / children_per_batch``
  examples (CNN) or streams (cells); with several devices each holds ``children_per_batch / d``
  of them and their shard of the batch, and the shared weights' gradients are averaged across
  the devices. ``num_devices``: how many local devices (0: every one that the children can be
  split over evenly). The controller steps' and the derive's ``search.children_per_step``
  architectures are split over the same devices where they divide evenly. One device or several
  compute the same step, up to the order of floating-point sums.

  The recurrent-cell space (``nas_jax.training.shared_rnn``): one language model of
  ``lm_child``'s shape (layers, sizes, dropout, ``bptt``) holds every cell's weights; a minibatch
  is one ``lm_child.bptt`` window of ``batch_size`` streams of the training text (its first
  ``lm_child.max_train_tokens``, 0 = all; 0 ``train_steps``: one pass), the state carried; a
  validation minibatch one window of ``eval_batch_size`` streams of the validation slice
  (``lm_child.max_eval_tokens``), which the derive scores whole. The reward is
  ``lm_child.reward_constant`` / ppl^2 (``reward_power`` stays 1); ``lm_child``'s training
  recipe (epochs, learning rate, batch size) is the retrain's, not used here.
  """
  enabled: bool = False
  epochs: int = 10
  train_steps: int = 0
  children_per_batch: int = 1
  controller_steps: int = 10
  derive_samples: int = 16
  derive_top_k: int = 5
  batch_size: int = 128
  eval_batch_size: int = 128
  reward_power: float = 1.0
  learning_rate: float = 0.05
  lr_min: float = 0.0
  lr_schedule: str = "cosine"
  lr_t0: int = 10
  lr_t_mul: int = 2
  momentum: float = 0.9
  nesterov: bool = True
  weight_decay: float = 1e-4
  grad_clip: float = 0.0
  fast_compile: bool = False
  num_devices: int = 0

  def __post_init__(self):  # the ranges of single fields: nas_jax.config.parse
    if not 0 <= self.momentum < 1:
      raise ConfigError(f"config.shared.momentum: must be in [0, 1), got {self.momentum}")
    if self.derive_top_k > self.derive_samples:
      raise ConfigError(f"config.shared.derive_top_k: must be <= shared.derive_samples "
                        f"({self.derive_samples}), got {self.derive_top_k}")
    if self.batch_size % self.children_per_batch:
      raise ConfigError(f"config.shared.batch_size: the minibatch is split among "
                        f"shared.children_per_batch={self.children_per_batch} architectures; make "
                        f"it a multiple of that, got {self.batch_size}")
    if self.lr_min > self.learning_rate:
      raise ConfigError(f"config.shared.lr_min: must be <= shared.learning_rate "
                        f"({self.learning_rate}), got {self.lr_min}")


class Settings(NamedTuple):
  """What an executor is built from: its config sections, not the whole config."""
  shared: SharedConfig
  children_per_step: int    # ``search.children_per_step``: m, the architectures scored at once
  lm_child: Any = None      # ``config.lm_child`` (a cell space's language model and reward)


class Executor(Protocol):
  """Trains and scores a space's children under shared weights (``Executor(settings, space,
  dataset, keys)``; ``keys``: named PRNG streams ``weights``, ``data``, ``aug``, ``dropout``,
  ``val``).

  ``init`` gives the executor's part of the checkpointed state (shared weights, optimiser state,
  ...); the loop threads it through ``train_step`` (global training step ``g``) and the scores.
  """
  metric: base.Metric   # the row value that ranks children
  num_layers: int       # the depth of every child
  train_steps: int      # training steps per phase

  def init(self) -> dict: ...

  def train_step(self, ws: dict, archs: Sequence[Any], g: int) -> tuple[dict, Any]: ...

  def loss_fields(self, losses: list, phase: int) -> dict:
    """The phase's training fields of ``steps.jsonl`` (raises FloatingPointError if it diverged)."""

  def score(self, ws: dict, archs: Sequence[Any], j: int) -> np.ndarray:
    """The metric of m architectures on controller step ``j``'s validation minibatch."""

  def score_all(self, ws: dict, archs: Sequence[Any]) -> np.ndarray:
    """The metric of m architectures on the whole validation set."""

  def reward(self, value: float) -> float: ...

  def error(self, value: float) -> str:
    """"" unless the child failed (e.g. a non-finite perplexity): then its error text."""

  def fields(self, arch: Any, value: float) -> dict:
    """The history row's metric fields and ``param_count``."""


def devices(sh: SharedConfig) -> list:
  """The devices the shared search runs on (see :class:`SharedConfig`): the first
  ``sh.num_devices`` local ones (0: the most, up to all, that ``children_per_batch`` divides
  evenly; a warning names the idle ones). With several processes (``jax.distributed``), every
  device of every process, which ``children_per_batch`` must divide."""
  n = sh.children_per_batch
  if jax.process_count() > 1:
    every = jax.devices()
    if sh.num_devices or n % len(every):
      raise ConfigError(f"config.shared.children_per_batch: with {jax.process_count()} processes "
                        f"the shared weights train on all {len(every)} devices, one share of "
                        f"the architectures each; make it a multiple of {len(every)} (and leave "
                        f"shared.num_devices at 0), got {n}")
    return every
  local = jax.local_devices()
  if sh.num_devices > len(local):
    raise ConfigError(f"config.shared.num_devices: {sh.num_devices} asked for, this process has "
                      f"{len(local)} ({local[0].platform}); use 0 for all of them")
  if sh.num_devices:
    if n % sh.num_devices:
      raise ConfigError(f"config.shared.children_per_batch: {n} architectures per minibatch "
                        f"cannot be split over shared.num_devices={sh.num_devices}; make it a "
                        f"multiple of {sh.num_devices}")
    return local[:sh.num_devices]
  d = max(k for k in range(1, len(local) + 1) if n % k == 0)
  if d < len(local):
    logging.warning("config.shared.children_per_batch=%d: the weight-sharing search uses %d of "
                    "the %d local devices; make it a multiple of %d to use them all", n, d,
                    len(local), len(local))
  return local[:d]


class Placement:
  """Puts the shared programs' inputs where they run: on one device as they are; over several
  devices replicated on all (with several processes as global arrays, built from this process's
  copy: every process holds the same data, architectures and state). The programs split what
  belongs to each device themselves."""

  def __init__(self, devs):
    self.devices = tuple(devs)
    self.sharding = None
    if len(self.devices) > 1:
      mesh = jax.sharding.Mesh(np.asarray(self.devices), ("children",))
      self.sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def __call__(self, tree):
    return tree if self.sharding is None else jax.tree.map(self._put, tree)

  def state(self, ws):
    """The shared weights' state (restored, or initialised) through the host, then placed. (A
    restored array is committed to its device, a new one is not: jit's cache would compile
    again for the restored state. Through the host both are alike.)"""
    return self(jax.tree.map(lambda a: jax.numpy.asarray(np.asarray(a)), ws))

  def _put(self, a):
    if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(self._put(jax.random.key_data(a)),
                                      impl=jax.random.key_impl(a))
    if jax.process_count() == 1:
      return jax.device_put(a, self.sharding)
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, self.sharding, lambda idx: host[idx])


def program_settings(sh: SharedConfig) -> SharedConfig:
  """``sh`` with the fields the compiled programs do not read at their defaults: searches that
  differ only in the schedule's lengths share one compiled program."""
  d = SharedConfig()
  return dataclasses.replace(sh, epochs=d.epochs, train_steps=d.train_steps,
                             children_per_batch=d.children_per_batch,
                             controller_steps=d.controller_steps, derive_samples=d.derive_samples,
                             derive_top_k=d.derive_top_k, batch_size=d.batch_size,
                             eval_batch_size=d.eval_batch_size, num_devices=d.num_devices)


def check_space(space, config=None) -> None:
  """The space a weight-sharing search can run: the CNN space at one depth, odd filters, no
  strides (one max-size network holds every child), or the recurrent-cell space (one language
  model holds every cell's leaf projections); ``config``, if given, is checked against it."""
  if isinstance(space, (RNNCellSpace, ENASCellSpace)):
    if config is not None:
      _check_cells(config)
    return
  if not isinstance(space, CNNSpace):
    raise ConfigError(f"config.shared.enabled: weight sharing is implemented for the CNN space "
                      f"and the recurrent-cell spaces, not {type(space).__name__}; set "
                      "shared.enabled=False")
  if space.layers_increment and (not space.max_layers or space.max_layers > space.start_layers):
    raise ConfigError("config.search_space.layers_increment: a weight-sharing search has one "
                      "depth (one shared network); set it to 0 (depth = start_layers)")
  if space.predict_strides:
    raise ConfigError("config.search_space.predict_strides: the shared network has one shape; "
                      "set it to False")
  for name in ("filter_heights", "filter_widths"):
    even = [k for k in getattr(space, name) if k % 2 == 0]
    if even:
      raise ConfigError(f"config.search_space.{name}: the shared network centres each filter in "
                        f"the largest one and needs odd sizes, got {even}")


def _check_cells(config) -> None:
  """What the shared language model of ``nas_jax.training.shared_rnn`` cannot do."""
  sh, lm_cfg = config.shared, config.lm_child.lm
  if sh.reward_power != 1.0:
    raise ConfigError(f"config.shared.reward_power: a cell's reward is lm_child.reward_constant "
                      f"/ ppl^2 (the exact cell search's); leave reward_power at 1, got "
                      f"{sh.reward_power}")
  if lm_cfg.tie_embeddings and lm_cfg.embed_size != lm_cfg.hidden_size:
    raise ConfigError(f"config.lm_child.tie_embeddings: the tied softmax needs embed_size == "
                      f"hidden_size, got {lm_cfg.embed_size} and {lm_cfg.hidden_size}")
