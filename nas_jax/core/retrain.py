"""The final training of found CNNs: from scratch, with a longer schedule, scored on the test set.

The paper's last stage (Section 4.1): the best architectures of the search are trained again from
scratch "to convergence", and the test error is measured once, for the model chosen on
validation. :func:`run` does this for the best (or the ``top_k`` best, unique by tokens) rows of
a search's history, or for an architecture given by hand (:func:`parse_arch`), with the schedule
of a *final* config (``nas_jax.config.default_final_config``; ``nas_jax/configs/cnn_*_final.py``),
parsed by ``nas_jax.config.parse_final``; ``nas_jax.experiment.retrain`` does both.

The output directory (default ``SEARCH_WORKDIR/retrain``):

* ``config.json``: the final config, the architectures and their source (a rerun with another
  config or other architectures is refused, leaving every file as it was);
* ``rankR/checkpoints/``: orbax checkpoints of the training state after every epoch; rerunning
  the same command continues from the last finished epoch and ends with the numbers of an
  uninterrupted run (the data order is ``fold_in(key, epoch)``, the state is restored exactly);
* ``rankR/tensorboard/``: per-epoch scalars ``train/loss``, ``train/learning_rate``,
  ``val/accuracy``, and ``test/accuracy`` at the end (``tensorboard --logdir OUT``);
* ``rankR/model/``: the trained variables (:func:`load_trained`); ``rankR/result.json``: the
  child's numbers, written last (a child with it is done);
* ``metrics.json``: ``{"config", "source_workdir", "children": [...]}``, one entry per rank (see
  :func:`run`).

FLOPs are XLA's count (``jit(...).lower(...).compile().cost_analysis()["flops"]``) of one image's
forward pass in inference mode: a multiply-add is 2 FLOPs, and the taps of a SAME-padded
convolution that fall on the padding are not counted.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

from nas_jax.errors import InputError  # noqa: F401  (public here too)
from nas_jax.spaces import base, cnn
from nas_jax.core import final_training, history, loop, workdir as workdir_lib
from nas_jax.training import data as data_lib

OUT_DIR = "retrain"            # default output folder inside the search workdir
_UNUSED_CHILD_FIELDS = ("reward_last_epochs", "reward_power")  # no reward in a final training
_RESUMABLE = ("data.data_dir", "tensorboard", "keep_checkpoints")  # may change on a rerun
class Child(NamedTuple):
  """One architecture to retrain."""
  rank: int
  tokens: list[int]
  arch: Any                     # the JSON form, as history rows store it
  description: str
  search_reward: float | None   # its reward in the search (None: not from a search)


# ----------------------------------------------------------------------------------------------
# What to retrain


def search_space_of(search_workdir: str) -> tuple[cnn.CNNSpace, dict]:
  """The CNN space a search workdir's ``config.json`` records, and that flat config.

  Raises:
    InputError: no such workdir or config, or its space is not a CNN space.
  """
  flag = f"--search_workdir {search_workdir}"
  if not os.path.isdir(search_workdir):
    raise InputError(f"{flag}: not a directory; give the workdir of a CNN search "
                     "(experiments/search.py --workdir), or --arch and --workdir")
  path = os.path.join(search_workdir, "config.json")
  try:
    with open(path) as f:
      record = json.load(f)
  except FileNotFoundError:
    raise InputError(f"{flag}: no config.json, so not a search workdir; give the --workdir of "
                     "experiments/search.py") from None
  except (OSError, ValueError) as e:
    raise InputError(f"{flag}: cannot read {path} ({e}); restore it") from None
  run = history.run_space(record)
  if run.space is None:
    raise InputError(f"{flag}: cannot rebuild its search space: {run.why}")
  if not isinstance(run.space, cnn.CNNSpace):
    raise InputError(f"{flag}: the search is of {run.class_name} ({run.module}), not a CNN space; "
                     "train_child.py retrains CNNs (a cell: experiments/train_lm.py "
                     f"--config.cell={os.path.join(search_workdir, 'summary.json')})")
  return run.space, record


def top_unique(rows: Sequence[dict], k: int) -> list[dict]:
  """The ``k`` history rows of the highest rewards, one per architecture (by ``tokens``; an
  architecture evaluated more than once keeps its best row), failed rows skipped."""
  return history.top_architectures(history.unique_best(rows), k)


def children_from_history(search_workdir: str, space: cnn.CNNSpace, top_k: int) -> list[Child]:
  """The ``top_k`` best unique architectures of a search workdir (:func:`top_unique`; of a
  weight-sharing search, those its derive stage scored: ``history.ranking_rows``).

  Raises:
    InputError: the history is missing, damaged or empty, or every row failed.
  """
  flag = f"--search_workdir {search_workdir}"
  try:
    rows = history.load_history(search_workdir)
  except FileNotFoundError:
    rows = None
  except (OSError, ValueError) as e:
    raise InputError(f"{flag}: {e}; restore history.jsonl") from None
  if not rows:
    raise InputError(f"{flag}: no history rows yet; run (or resume) the search first, or give "
                     "--arch")
  chosen = top_unique(history.ranking_rows(rows), top_k)
  if not chosen:
    raise InputError(f"{flag}: all {len(rows)} architectures of its history failed, so there is "
                     "none to retrain; fix the search (see the rows' 'error') or give --arch")
  if len(chosen) < top_k:
    logging.warning("--top_k %d: the history has %d unique architectures that did not fail; "
                    "retraining those", top_k, len(chosen))
  out = []
  for rank, r in enumerate(chosen, 1):
    arch = space.from_json(r["arch"])
    out.append(Child(rank, [int(t) for t in r["tokens"]], base.to_json(arch),
                     space.describe(arch), float(r["reward"])))
  return out


# ----------------------------------------------------------------------------------------------
# The output directory and the whole run


class Plan(NamedTuple):
  """What :func:`run` will do, every input checked (:func:`plan`); nothing is written yet."""
  out_dir: str
  final: Any                    # nas_jax.config.Final
  space: cnn.CNNSpace
  children: list[Child]
  source_workdir: str | None
  split_seed: int
  record: dict                  # config.json of the output directory


def plan(final, out_dir: str | None = None, *,
         search_workdir: str | None = None, arch: str | None = None, top_k: int = 1) -> Plan:
  """Checks every input of :func:`run` (reading only) and says what it will train.

  Raises:
    InputError: a bad flag, search workdir, ``--arch`` or output directory (the message names the
      flag and the fix).
  ``final``: the parsed final config (``nas_jax.config.parse_final``).
  """
  if not search_workdir and not arch:
    raise InputError("give --search_workdir (a CNN search's workdir: its best architectures are "
                     f"retrained) or --arch ({cnn.ARCH_FORMATS})")
  if top_k < 1:
    raise InputError(f"--top_k {top_k}: must be >= 1")
  if arch and top_k != 1:
    raise InputError(f"--top_k {top_k} picks from a search's history; with --arch give no --top_k")
  split_seed = final.split_seed
  if search_workdir:
    search_workdir = os.path.abspath(search_workdir)
    space, record = search_space_of(search_workdir)
    if record.get("data.name") not in (None, final.data.name):
      raise InputError(f"--search_workdir {search_workdir}: the search ran on "
                       f"{record['data.name']!r} but config.data.name is {final.data.name!r}; use "
                       f"the final config of {record['data.name']!r} (nas_jax/configs/"
                       f"cnn_{record['data.name']}_final.py) or --config.data.name="
                       f"{record['data.name']}")
    searched = int(record.get("seed", 0))
    if split_seed == -1:
      split_seed = searched
    elif split_seed != searched:
      logging.warning("config.split_seed=%d differs from the search's seed %d: for digits the test "
                      "images then overlap the ones the search trained and chose on", split_seed,
                      searched)
  else:
    space, split_seed = final.space, max(split_seed, 0)
    if not isinstance(space, cnn.CNNSpace):
      raise InputError(f"config.search_space: {type(space).__name__} is not a CNN space")
  if arch:
    arch_obj, tokens = cnn.parse_arch(arch, space)
    reward = None
    if search_workdir:  # the architecture's best reward in that search, if it was evaluated
      with contextlib.suppress(OSError, ValueError):
        same = [r for r in top_unique(history.load_history(search_workdir), 10**9)
                if r["tokens"] == tokens]
        reward = float(same[0]["reward"]) if same else None
    children = [Child(1, tokens, base.to_json(arch_obj), space.describe(arch_obj), reward)]
  else:
    children = children_from_history(search_workdir, space, top_k)
  if not out_dir:
    if not search_workdir:
      raise InputError("--workdir: required with --arch alone (no --search_workdir); give the "
                       "output directory")
    out_dir = os.path.join(search_workdir, OUT_DIR)
  config = json.loads(json.dumps(final.record))
  config["split_seed"] = split_seed
  config["search_space"] = {**base.to_json(space), "class": type(space).__name__,
                            "module": type(space).__module__}
  record = {"config": config, "source_workdir": search_workdir,
            "children": [c._asdict() for c in children]}
  _check_out_dir(out_dir, record)
  return Plan(out_dir, final, space, children, search_workdir, split_seed, record)


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
  return out


def _check_out_dir(out_dir: str, record: dict) -> None:
  """Refuses (reading only) an output directory of another config or other architectures."""
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise InputError(f"--workdir {out_dir}: a file, not a directory; give a directory")
  path = os.path.join(out_dir, "config.json")
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    raise InputError(f"--workdir {out_dir}: cannot read {path} ({e}); restore it or use a new "
                     "--workdir") from None
  if [c.get("tokens") for c in old.get("children", [])] != [c["tokens"] for c in
                                                             record["children"]]:
    raise InputError(f"--workdir {out_dir} holds the retraining of other architectures "
                     f"({', '.join(c.get('description', '?') for c in old.get('children', []))}); "
                     "use a new --workdir, or the same --arch/--top_k")
  a, b = _flat(old.get("config", {})), _flat(record["config"])
  diffs = sorted(k for k in set(a) | set(b) if k not in _RESUMABLE and a.get(k) != b.get(k))
  if diffs:
    shown = "; ".join(f"config.{k}: it has {a.get(k)!r}, now {b.get(k)!r}" for k in diffs[:3])
    raise InputError(f"--workdir {out_dir} holds a retraining with another config ({shown}); use "
                     "a new --workdir or the same config")


@contextlib.contextmanager
def _locked(out_dir: str):
  """Creates ``out_dir`` and holds its ``.lock`` (one run at a time; the workdir's lock)."""
  os.makedirs(out_dir, exist_ok=True)
  with workdir_lib.take_lock(os.path.join(out_dir, ".lock"), lambda holder: InputError(
      f"--workdir {out_dir} is in use by another train_child.py (pid {holder}); wait for it or "
      "use another --workdir"), mark=False) as lock:
    yield lock


def _write_json(path: str, obj) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(path + ".tmp", path)


def run(final, out_dir: str | None = None, *,
        search_workdir: str | None = None, arch: str | None = None, top_k: int = 1,
        dataset: data_lib.Dataset | None = None,
        log_fn: Callable[[str], None] | None = None) -> dict:
  """Retrains the chosen architectures from scratch with the final config ``final``.

  Rerunning the same call continues where a killed one stopped (finished children are kept, an
  unfinished one goes on from its last epoch) and gives the same numbers as one run.

  Args:
    final: a parsed final config (``nas_jax.config.parse_final`` of ``default_final_config`` or
      ``nas_jax/configs/cnn_*_final.py``; ``nas_jax.experiment.retrain`` parses and calls this).
    out_dir: the output directory; default ``search_workdir/retrain``.
    search_workdir: a CNN search's workdir: its space (``config.json``) and, without ``arch``,
      its ``top_k`` best unique architectures (``history.jsonl``, :func:`top_unique`).
    arch: an architecture (:func:`parse_arch`'s forms); its space is the search workdir's, or
      without one ``final.space``.
    top_k: how many of the search's best architectures.
    dataset: the data (default: ``final.data`` split with ``split_seed``).
    log_fn: callable(str) for progress, one line per epoch.

  Returns:
    What ``out_dir/metrics.json`` holds: ``{"config": the final config (its ``search_space`` the
    space trained, ``split_seed`` resolved), "source_workdir": the search workdir or None,
    "children": [{"rank", "tokens", "arch", "description", "search_reward", "val_accuracy" (last
    epoch), "test_accuracy", "val_accuracies", "train_losses", "param_count", "flops",
    "seconds"}, ...]}`` by rank.

  Raises:
    InputError, ConfigError: bad input, before anything is written.
    DataUnavailableError: the data is not on this machine.
    FloatingPointError: a child's training loss became NaN/inf.
  """
  p = plan(final, out_dir, search_workdir=search_workdir, arch=arch, top_k=top_k)
  if dataset is None:
    dataset = data_lib.load(p.final.data, p.split_seed)
  with _locked(p.out_dir) as lock:
    _check_out_dir(p.out_dir, p.record)  # again, under the lock
    workdir_lib.mark_lock(lock)
    config_path = os.path.join(p.out_dir, "config.json")
    if not os.path.exists(config_path):
      _write_json(config_path, p.record)
    root = jax.random.key(p.final.seed)
    with loop.Interrupt("the epoch in training is checkpointed") as interrupt:
      results = _train_children(p, dataset, root, interrupt, log_fn)
    keep = ("rank", "tokens", "arch", "description", "search_reward", "val_accuracy",
            "test_accuracy", "val_accuracies", "train_losses", "param_count", "flops", "seconds")
    metrics = {"config": p.record["config"], "source_workdir": p.source_workdir,
               "children": [{k: r[k] for k in keep} for r in results]}
    _write_json(os.path.join(p.out_dir, "metrics.json"), metrics)
  return metrics


def load_trained(out_dir: str, rank: int = 1):
  """The trained model of one rank of a :func:`run`'s output directory.

  Returns:
    ``(module, variables)``: ``module.apply(variables, images_BxHxWxC)`` gives the logits (the
    images standardised as ``nas_jax.training.data`` returns them).

  Raises:
    FileNotFoundError: that rank has not finished training.
  """
  child_dir = os.path.join(out_dir, f"rank{rank}")
  result_path = os.path.join(child_dir, "result.json")
  if not os.path.exists(result_path):
    raise FileNotFoundError(f"{result_path}: rank {rank} has not finished training in {out_dir}")
  with open(os.path.join(out_dir, "config.json")) as f:
    record = json.load(f)
  with open(result_path) as f:
    result = json.load(f)
  run_space = history.run_space({f"search_space.{k}": v for k, v in
                                record["config"]["search_space"].items()})
  if run_space.space is None:
    raise ValueError(f"{out_dir}/config.json: {run_space.why}")
  module = run_space.space.build(run_space.space.from_json(result["arch"]), result["num_classes"])
  target = jax.eval_shape(lambda: module.init(jax.random.key(0),
                                              jnp.zeros((1, *result["input_shape"]))))
  variables = ocp.Checkpointer(ocp.StandardCheckpointHandler()).restore(
      os.path.abspath(os.path.join(child_dir, "model")), args=ocp.args.StandardRestore(target))
  return module, variables


def _train_children(p: Plan, dataset, root, interrupt, log_fn) -> list[dict]:
  """Trains (or reads back) each child of the plan ``p``; a Ctrl-C stops after a checkpoint."""
  results = []
  for c in p.children:
    child_dir = os.path.join(p.out_dir, f"rank{c.rank}")
    result_path = os.path.join(child_dir, "result.json")
    if os.path.exists(result_path):
      with open(result_path) as f:
        results.append(json.load(f))
      if log_fn:
        log_fn(f"rank {c.rank}/{len(p.children)}: {c.description}: trained before, its "
               f"result read from {result_path}")
      continue
    if log_fn:
      log_fn(f"rank {c.rank}/{len(p.children)}: {c.description} (search reward "
             f"{'-' if c.search_reward is None else f'{c.search_reward:.4f}'})")
    model = p.space.build(p.space.from_json(c.arch), dataset.num_classes)
    out = final_training.train_child(
        model, dataset, p.final.train, jax.random.fold_in(root, c.rank), child_dir,
        keep_checkpoints=p.final.keep_checkpoints, tensorboard=p.final.tensorboard,
        name=f"rank {c.rank} ", log_fn=log_fn, interrupt=interrupt)
    result = {**c._asdict(), **out}
    _write_json(result_path, result)
    if log_fn:
      log_fn(f"rank {c.rank}: val_acc {out['val_accuracy']:.4f} test_acc "
             f"{out['test_accuracy']:.4f} params {out['param_count']:,} flops "
             f"{out['flops']:,} ({out['seconds']:.0f} s)")
    results.append(result)
    interrupt.check()
  return results
