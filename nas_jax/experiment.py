"""The experiment assembly: a config parsed once, its parts built from one table, one loop run.

:func:`run_search` is the entry point of every search (the ``nas-jax search`` command, the
notebooks, the benchmarks, a user's script). It parses the config (:func:`nas_jax.config.parse`),
builds the space, the searcher and the evaluator (or the weight-sharing executor) of the space's
type from :data:`PARTS`, and hands them to the exact loop (:mod:`nas_jax.core.search`) or the
weight-sharing loop (:mod:`nas_jax.core.shared_search`). The library modules below take their own
config section; only this module and :mod:`nas_jax.config` know the whole config.

A space of one's own needs no entry: its children are trained as image classifiers by the exact
evaluator, or by the evaluator the space brings (``space.evaluator(config)``); a searcher of
one's own is passed as an object (``searcher=``) or registered in
:data:`nas_jax.core.searchers.SEARCHERS`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import jax

from nas_jax import config as config_lib, runtime
from nas_jax.core import retrain as retrain_lib, search, searchers, shared_search
from nas_jax.core.loop import SearchResult  # noqa: F401  (the result type of run_search)
from nas_jax.errors import ConfigError
from nas_jax.spaces import base, cnn, enas_cell, rnn_cell
from nas_jax.training import evaluators, shared_cnn, shared_rnn, trainer


@dataclasses.dataclass(frozen=True)
class SpaceParts:
  """What a space type is searched with.

  ``evaluator(config) -> Evaluator``: trains and scores a step's children (the exact search);
  ``shared_executor``: the weight-sharing search's executor class, or None (no weight sharing).
  """
  evaluator: Callable[[config_lib.Config], evaluators.Evaluator]
  shared_executor: type | None = None


def _exact_only(config: config_lib.Config) -> evaluators.Evaluator:
  if config.child.executor != "exact":
    raise ConfigError(f"config.child.executor: {config.child.executor!r} is for the CNN space's "
                      f"masked network; {type(config.search_space).__name__} trains its children "
                      "with 'exact'")
  return evaluators.exact(config.child, config.search.verbose)


def _cnn_evaluator(config: config_lib.Config) -> evaluators.Evaluator:
  if config.child.executor == "vmap":
    return evaluators.masked(config.child, config.search.verbose)
  return evaluators.exact(config.child, config.search.verbose)


PARTS: dict[type, SpaceParts] = {
    cnn.CNNSpace: SpaceParts(_cnn_evaluator, shared_cnn.Executor),
    rnn_cell.RNNCellSpace: SpaceParts(
        lambda config: evaluators.cells(config.lm_child, config.search.verbose),
        shared_rnn.Executor),
    enas_cell.ENASCellSpace: SpaceParts(
        lambda config: evaluators.cells(config.lm_child, config.search.verbose),
        shared_rnn.Executor),
}
"""Space type -> its parts; a subclass gets its nearest base class's entry."""

USER_SPACE_PARTS = SpaceParts(_exact_only)


def parts_of(space: base.SearchSpace) -> SpaceParts:
  """The entry of :data:`PARTS` for ``space``'s type (or a base class), else the exact evaluator."""
  for cls in type(space).__mro__:
    if cls in PARTS:
      return PARTS[cls]
  return USER_SPACE_PARTS


def evaluator_of(config: config_lib.Config) -> evaluators.Evaluator:
  """The evaluator the space brings, else the one :data:`PARTS` gives its type."""
  space = config.search_space
  own = space.evaluator(config)
  return own if own is not None else parts_of(space).evaluator(config)


def run_search(cfg, workdir: str, *, space: base.SearchSpace | None = None, dataset=None,
               searcher: Any = None,
               evaluate_fn: Callable[..., trainer.ChildResult] | None = None,
               evaluate_batch_fn: Callable[..., Iterable[trainer.ChildResult]] | None = None,
               reward_fn: Callable[[Any, float], float] | None = None,
               progress: bool = True) -> SearchResult:
  """Runs (or resumes) a search in ``workdir``.

  Args:
    cfg: a config from ``nas_jax.config.default_config()`` or an experiment file
      (``nas_jax.configs.custom`` for a space of your own: it has no space section).
    workdir: output directory; a previous run of the same config there is resumed.
    space: a search space object; defaults to the one ``cfg.search_space`` names (required
      where that section is empty, ``search_space.name=""``).
    dataset: the data; defaults to ``cfg.data`` (``nas_jax.training.data.load``).
    searcher: a searcher object (``init``/``propose``/``feedback``, see
      :mod:`nas_jax.core.searchers`) instead of the one ``config.search.searcher`` names; its
      ``name`` attribute (else its class name) is what ``config.json`` records.
    evaluate_fn: ``(space, arch, dataset, key) -> ChildResult``; replaces the space's evaluator
      (e.g. a fake reward to test searchers).
    evaluate_batch_fn: ``(space, archs, dataset, keys) -> iterable of ChildResult`` in order;
      replaces the space's evaluator, which trains a step's children.
    reward_fn: the weight-sharing search only: ``(arch, value) -> reward`` replacing the
      executor's reward (tests: a planted reward).
    progress: one line per controller step (reward, baseline, children/min, elapsed, time left).
      It is always logged at INFO (absl); where no logging set-up would show that (a notebook or
      a script: :func:`nas_jax.runtime.progress_is_logged`), it is also written to stderr unless
      ``progress=False``.

  Under ``jax.distributed`` every process runs this with the same config: the children of each
  step are shared out, all processes apply the same update, and only process 0 writes ``workdir``.
  With ``cfg.shared.enabled`` the search is the weight-sharing one (one process).

  Returns:
    A :class:`nas_jax.core.loop.SearchResult` with the best history row.
  """
  config = config_lib.parse(cfg, space)   # checks the space searched against the config
  config, searcher = _searcher(config, searcher)
  space = config.search_space
  _header(config, workdir, progress)
  if config.shared.enabled:
    if evaluate_fn is not None or evaluate_batch_fn is not None:
      raise ValueError("evaluate_fn/evaluate_batch_fn replace the children's training; a "
                       "weight-sharing search (config.shared.enabled) has none to replace")
    return shared_search.run(config, workdir, space=space, searcher=searcher,
                             executor_class=parts_of(space).shared_executor, dataset=dataset,
                             reward_fn=reward_fn, progress=progress)
  if reward_fn is not None:
    raise ValueError("reward_fn replaces a weight-sharing executor's reward; for the exact search "
                     "pass evaluate_fn")
  if evaluate_fn is not None:
    evaluator = lambda space, archs, dataset, keys: (
        evaluate_fn(space, a, dataset, k) for a, k in zip(archs, keys))
  else:
    evaluator = evaluate_batch_fn or evaluator_of(config)
  return search.run(config, workdir, space=space, searcher=searcher, evaluator=evaluator,
                    dataset=dataset, progress=progress)


def _header(config: config_lib.Config, workdir: str, show: bool) -> None:
  """The first line of a search: what runs where, before anything is trained."""
  sh, m = config.shared, config.search.children_per_step
  budget = (f"weight sharing, {sh.epochs} epochs x {sh.controller_steps} controller steps x {m} "
            f"architectures, then {sh.derive_samples} derived" if sh.enabled else
            f"{config.search.num_steps} steps x {m} children")
  devices = jax.local_devices()
  runtime.log_progress(
      show, "search | space %s | searcher %s | %s | seed %d | workdir %s | %d x %s device(s)%s",
      type(config.search_space).__name__, config.flat.get("search.searcher"), budget, config.seed,
      workdir, len(devices), devices[0].platform,
      f" | process {jax.process_index()} of {jax.process_count()}" if jax.process_count() > 1
      else "")


def _searcher(config: config_lib.Config, searcher):
  """The searcher ``config.search.searcher`` names, or the one given (recorded by its name)."""
  if searcher is None:
    return config, searchers.make_searcher(config.search.searcher, config.controller)
  for method in ("init", "propose", "feedback"):
    if not callable(getattr(searcher, method, None)):
      raise TypeError(f"searcher: {type(searcher).__name__} has no {method}() method; a searcher "
                      "has init, propose and feedback (see nas_jax.core.searchers)")
  name = getattr(searcher, "name", type(searcher).__name__)
  return dataclasses.replace(config, flat={**config.flat, "search.searcher": name}), searcher


def retrain(cfg, out_dir: str | None = None, **kwargs) -> dict:
  """The final training (:func:`nas_jax.core.retrain.run`) of the final config ``cfg``
  (``nas_jax/configs/cnn_*_final.py``; parsed by :func:`nas_jax.config.parse_final`)."""
  return retrain_lib.run(config_lib.parse_final(cfg), out_dir, **kwargs)


def retrain_plan(cfg, out_dir: str | None = None, **kwargs) -> retrain_lib.Plan:
  """What :func:`retrain` would do, every input checked, nothing written."""
  return retrain_lib.plan(config_lib.parse_final(cfg), out_dir, **kwargs)

