"""Evaluators: how the children of one controller step are trained and scored.

An evaluator is ``(space, archs, data, keys) -> iterable of ChildResult`` (in order, so the search
loop records each child as soon as it is done) with a ``metric`` attribute naming the value that
ranks children (:class:`nas_jax.spaces.base.Metric`). Each takes its own config section. The
experiment assembly (:mod:`nas_jax.experiment`) picks one per space type; a user's space whose
``build`` returns a Flax image classifier gets :func:`exact` without defining anything, and a
space may bring its own (``space.evaluator(config)``).

* :func:`exact` (image classifiers): each child compiled at its exact shapes and cached
  (``nas_jax.training.child``); on one device ``config.child.parallel_children`` children train
  side by side (0: one per CPU core; 1 on an accelerator), see ``child.evaluate_many``; with
  several local devices (``config.child.num_devices``: 0 = all)
  the children of a step are spread over them, one Python thread per device dispatching its
  children asynchronously (JAX releases the GIL while a device computes), and the results come
  back in order. A compiled program belongs to one device, so a child whose architecture already
  ran on a device goes back there unless that device is busier by more than a compile, as
  measured (:func:`assign_devices`);
* :func:`masked` (the CNN space, ``config.child.executor="vmap"``): the m children of a step
  trained together in one program over a masked max-size network (``nas_jax.spaces.masked_cnn``,
  ``nas_jax.training.masked_children``),
  compiled once per depth; with several local devices the children axis is sharded over them;
* :func:`cells` (the recurrent-cell space): all m language models of a step in one vmapped
  program (``nas_jax.training.cell_children``; ``config.lm_child.vmap=False`` trains them one
  after another).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
from typing import Callable, Iterable

import jax
from absl import logging

from nas_jax.errors import ConfigError
from nas_jax.spaces import base
from nas_jax.training import cell_children, child, masked_children, trainer


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """``fn(space, archs, data, keys) -> iterable of ChildResult`` and the metric that ranks them."""
  fn: Callable[..., Iterable[trainer.ChildResult]]
  metric: base.Metric

  def __call__(self, space, archs, data, keys):
    return self.fn(space, archs, data, keys)


def _log_fn(verbose: bool):
  return logging.info if verbose else None


def cells(lm_child, verbose: bool = False) -> Evaluator:
  """Language models with the searched cells, m at a time; reward c / ppl^2 (or above the
  unigram model's, ``lm_child.reward_above_unigram``). ``lm_child``: ``config.lm_child``."""

  def evaluate_cells(space, archs, corpus, keys):
    if not archs:
      return []
    floor = (cell_children.unigram_ppl(corpus, lm_child.lm) if lm_child.reward_above_unigram
             else None)
    return _all_or_failed(archs, lambda: cell_children.evaluate_cells(
        space, archs, corpus, lm_child.lm, keys, reward_constant=lm_child.reward_constant,
        vmap=lm_child.vmap, reward_floor_ppl=floor, log_fn=_log_fn(verbose)),
        {"val_ppl": None, "train_ppl": None})
  return Evaluator(evaluate_cells, base.PERPLEXITY)


class _OnDevice:
  """The dataset's arrays on each device, copied once per search (the last dataset only)."""

  def __init__(self):
    self._cache = {}

  def __call__(self, dataset, device):
    if (id(dataset), device) not in self._cache:
      if any(k[0] != id(dataset) for k in self._cache):
        self._cache.clear()
      self._cache[(id(dataset), device)] = dataset._replace(**{
          f: jax.device_put(getattr(dataset, f), device) for f in dataset._fields
          if f.endswith(("_images", "_labels"))})
    return self._cache[(id(dataset), device)]


def masked(child_cfg, verbose: bool = False) -> Evaluator:
  """The m CNN children of a step in one vmapped program over the masked max-size network
  (``child_cfg``: ``config.child``)."""
  train_cfg, placed = child_cfg.train, _OnDevice()
  devices = local_devices(child_cfg.num_devices)
  replicated = (jax.sharding.NamedSharding(trainer.children_mesh(devices),
                                           jax.sharding.PartitionSpec())
                if len(devices) > 1 else devices[0])

  def evaluate_vmap(space, archs, dataset, keys):
    if not archs:
      return []
    return _all_or_failed(archs, lambda: masked_children.evaluate_masked(
        space, archs, placed(dataset, replicated), train_cfg, keys, devices=tuple(devices),
        log_fn=_log_fn(verbose)), _NO_ACCURACY)
  return Evaluator(evaluate_vmap, base.ACCURACY)


def exact(child_cfg, verbose: bool = False) -> Evaluator:
  """Each child at its exact shapes; on one device ``child.parallel_children`` at once (0: as many
  as a CPU has cores, 1 on an accelerator), on several one after another on each
  (``child_cfg``: ``config.child``)."""
  train_cfg, placed, log_fn = child_cfg.train, _OnDevice(), _log_fn(verbose)
  devices = local_devices(child_cfg.num_devices)
  # One single-thread queue per device: a child runs on the device it was assigned to.
  pools = ([concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"child-{d}")
            for d in range(len(devices))] if len(devices) > 1 else None)
  workers = child.parallel_children(child_cfg.parallel_children) if pools is None else 1
  compiled_on = collections.OrderedDict()  # model -> indices of the devices it was compiled for
  # Wall seconds of recent children that compiled on their device (cold) and that did not (warm):
  # their ratio is the compile cost assign_devices weighs, as measured on this workload.
  seconds = {True: collections.deque(maxlen=32), False: collections.deque(maxlen=32)}

  def compile_cost() -> float:
    if not (seconds[True] and seconds[False]):
      return DEFAULT_COMPILE_COST
    ratio = (sum(seconds[True]) / len(seconds[True])) / (sum(seconds[False]) / len(seconds[False]))
    return min(max(ratio - 1.0, 0.0), 100.0)

  def evaluate_one(model, dataset, key):
    if isinstance(model, Exception):  # the user's space could not build this child
      return trainer.failed_result(model, _NO_ACCURACY)
    return child.evaluate(model, dataset, train_cfg, key, log_fn=log_fn)

  def evaluate_exact(space, archs, dataset, keys):
    models = [_build(space, arch, dataset.num_classes) for arch in archs]
    if pools is None:
      yield from child.evaluate_many(models, placed(dataset, devices[0]), train_cfg, keys,
                                     workers=workers, evaluate_fn=evaluate_one)
      return
    built = [k for k, model in enumerate(models) if not isinstance(model, Exception)]
    known = {models[k]: set(compiled_on.get(models[k], ())) for k in built}
    where, cold = [0] * len(models), [False] * len(models)
    for k, d in zip(built, assign_devices([models[k] for k in built], len(devices), compiled_on,
                                          compile_cost())):
      where[k], cold[k] = d, d not in known[models[k]]
      known[models[k]].add(d)
    futures = [pools[d].submit(evaluate_one, model, placed(dataset, devices[d]), key)
               for model, key, d in zip(models, keys, where)]
    for k, r in enumerate(child.in_order(futures)):
      if k in built and not r.failed:
        seconds[cold[k]].append(r.seconds)
      yield r._replace(metrics={**r.metrics, "device": str(devices[where[k]])})
  return Evaluator(evaluate_exact, base.ACCURACY)


_NO_ACCURACY = {"val_accuracy": 0.0, "val_accuracies": []}


def _all_or_failed(archs, evaluate, metrics: dict) -> list:
  """``evaluate()`` (the results of a step's children trained together), or, if it raised (out
  of memory, say), every child failed with that error (and ``metrics``)."""
  try:
    return evaluate()
  except Exception as e:  # pylint: disable=broad-except
    return [trainer.failed_result(e, metrics)] * len(archs)


def _build(space, arch, num_classes):
  """``space.build(arch, num_classes)``, or the exception it raised (the child then fails)."""
  try:
    return space.build(arch, num_classes)
  except Exception as e:  # pylint: disable=broad-except
    return e


DEFAULT_COMPILE_COST = 1.5  # compile / training time of a child, until measured (digits on CPU)


def assign_devices(models, num_devices: int, compiled_on: collections.OrderedDict,
                   compile_cost: float = DEFAULT_COMPILE_COST,
                   remember: int = child.MAX_COMPILED) -> list[int]:
  """A device index per child: the one that would finish it first, counting compile time.

  A child costs 1 on a device its architecture was compiled for and ``1 + compile_cost``
  elsewhere (XLA programs are compiled per device: the same child on a second device compiles
  again); the exact executor passes the cost it measured (seconds of children that compiled over
  those that did not, minus 1). Each device runs its children one after another. Greedy in child
  order, ties to the lowest index, so the plan is deterministic.
  ``compiled_on`` (model -> set of device indices, the ``remember`` most recent models) is
  updated in place.
  """
  load = [0.0] * num_devices
  where = []
  for model in models:
    known = compiled_on.get(model, set())
    cost = [load[d] + (1.0 if d in known else 1.0 + compile_cost) for d in range(num_devices)]
    d = min(range(num_devices), key=lambda i: (cost[i], i))
    load[d] = cost[d]
    where.append(d)
    compiled_on[model] = known | {d}
    compiled_on.move_to_end(model)
    while len(compiled_on) > remember:
      compiled_on.popitem(last=False)
  return where


def local_devices(num_devices: int = 0) -> list:
  """The first ``num_devices`` local devices (0: all of them)."""
  devices = jax.local_devices()
  if num_devices > len(devices):
    raise ConfigError(
        f"config.child.num_devices: {num_devices} asked for, this process has {len(devices)} "
        f"({devices[0].platform}); use 0 for all of them")
  return devices[:num_devices or len(devices)]
