"""The final training of found CNNs: from scratch, with a longer schedule, scored on the test set.

The paper's last stage (Section 4.1): the best architectures of the search are trained again from
scratch "to convergence", and the test error is measured once, for the model chosen on
validation. :func:`run` does this for the best (or the ``top_k`` best, unique by tokens) rows of
a search's history, or for an architecture given by hand (:func:`parse_arch`), with the schedule
of a *final* config (:func:`default_final_config`; ``nas_jax/configs/cnn_*_final.py``).

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
import dataclasses
import fcntl
import json
import os
import re
import shutil
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from nas_jax import config as config_lib
from nas_jax.spaces import base, cnn
from nas_jax.tools import analysis, summaries
from nas_jax.training import child as child_lib, data as data_lib, trainer

OUT_DIR = "retrain"            # default output folder inside the search workdir
_UNUSED_CHILD_FIELDS = ("reward_last_epochs", "reward_power")  # no reward in a final training
_RESUMABLE = ("data.data_dir", "tensorboard", "keep_checkpoints")  # may change on a rerun
ARCH_FORMATS = ("the JSON of an architecture as history rows store it (their 'arch'), a JSON "
                "list of tokens, or a description like '0:3x3x16<img 1:5x5x32<0'")


class InputError(ValueError):
  """Bad input (a flag, the search workdir, the output directory); the message names the fix."""


class Child(NamedTuple):
  """One architecture to retrain."""
  rank: int
  tokens: list[int]
  arch: Any                     # the JSON form, as history rows store it
  description: str
  search_reward: float | None   # its reward in the search (None: not from a search)


class Final(NamedTuple):
  """A final config, checked (:func:`parse_final`)."""
  seed: int
  split_seed: int               # -1: the search's seed (0 without a search)
  data: config_lib.DataConfig
  space: base.SearchSpace       # the config's space (used with an architecture given by hand)
  train: child_lib.TrainConfig
  keep_checkpoints: int
  tensorboard: bool


# ----------------------------------------------------------------------------------------------
# Configs


def default_final_config(search_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A final config whose data and search space are those of the search config ``search_cfg``.

  Fields: ``seed`` (initialisation, data order, augmentation), ``split_seed`` (the seed of the
  data split, ``data.load``'s; -1: the search's ``config.seed``, so that the test images are ones
  the search never saw), ``data`` (as a search's), ``search_space`` (the space of an ``--arch``
  given without a search workdir), ``child`` (``TrainConfig``: epochs, batch size, learning rate
  and ``lr_schedule``, momentum, weight decay), ``keep_checkpoints`` (epochs kept), and
  ``tensorboard``.
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.split_seed = -1
  c.data = ml_collections.ConfigDict({k: search_cfg.data[k] for k in
                                      ("name", "data_dir", "num_validation", "max_train")})
  c.search_space = ml_collections.ConfigDict(search_cfg.search_space.to_dict())
  c.child = ml_collections.ConfigDict({k: v for k, v in
                                       dataclasses.asdict(child_lib.TrainConfig()).items()
                                       if k not in _UNUSED_CHILD_FIELDS})
  c.child.update({k: search_cfg.child[k] for k in c.child})
  c.keep_checkpoints = 2
  c.tensorboard = True
  return c


def parse_final(cfg: ml_collections.ConfigDict) -> Final:
  """Checks a final config with the search config's rules (:func:`nas_jax.config.parse`).

  Raises:
    ConfigError: naming the field and the fix.
  """
  known = set(default_final_config(config_lib.default_config()).keys())
  unknown = sorted(set(cfg.keys()) - known)
  if unknown:
    raise config_lib.ConfigError(f"config.{unknown[0]}: unknown key of a final config; use one "
                                 f"of {', '.join(sorted(known))}")
  full = config_lib.default_config(cfg.search_space.get("name", "cnn"))
  for section in ("data", "search_space", "child"):
    for k, v in cfg[section].items():
      if k not in full[section]:
        raise config_lib.ConfigError(f"config.{section}.{k}: unknown key; use one of "
                                     f"{', '.join(sorted(full[section]))}")
      try:
        full[section][k] = v
      except TypeError:
        raise config_lib.ConfigError(f"config.{section}.{k}: expected the type of "
                                     f"{full[section][k]!r}, got {v!r}") from None
  full.seed = cfg.seed
  full.child.reward_last_epochs = 1  # unused here; keeps parse's check of it against epochs
  if cfg.child.lr_schedule not in trainer.LR_SCHEDULES:
    raise config_lib.ConfigError(f"config.child.lr_schedule: {cfg.child.lr_schedule!r} is not "
                                 f"one of {list(trainer.LR_SCHEDULES)}")
  for name in ("split_seed", "keep_checkpoints"):
    if not isinstance(cfg[name], int) or isinstance(cfg[name], bool):
      raise config_lib.ConfigError(f"config.{name}: expected int, got {cfg[name]!r}")
  if cfg.split_seed < -1:
    raise config_lib.ConfigError(f"config.split_seed: must be >= 0, or -1 for the search's seed; "
                                 f"got {cfg.split_seed}")
  if cfg.keep_checkpoints < 1:
    raise config_lib.ConfigError(f"config.keep_checkpoints: must be >= 1, got "
                                 f"{cfg.keep_checkpoints}")
  parsed = config_lib.parse(full)
  return Final(cfg.seed, cfg.split_seed, parsed.data, parsed.search_space, parsed.child.train,
               cfg.keep_checkpoints, bool(cfg.tensorboard))


# ----------------------------------------------------------------------------------------------
# What to retrain


def search_space_of(search_workdir: str) -> tuple[cnn.CNNSpace, dict]:
  """The CNN space a search workdir's ``config.json`` records, and that flat config.

  Raises:
    InputError: no such workdir or config, or its space is not a CNN space.
  """
  from nas_jax.tools import report  # pylint: disable=import-outside-toplevel  (matplotlib)
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
  run = report.run_space(record)
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
  from nas_jax.tools import report  # pylint: disable=import-outside-toplevel  (matplotlib)
  best: dict[tuple, dict] = {}
  for r in rows:
    t = tuple(r["tokens"])
    if not r["failed"] and (t not in best or r["reward"] > best[t]["reward"]):
      best[t] = r
  return report.top_architectures(list(best.values()), k)


def children_from_history(search_workdir: str, space: cnn.CNNSpace, top_k: int) -> list[Child]:
  """The ``top_k`` best unique architectures of a search workdir (:func:`top_unique`; of a
  weight-sharing search, those its derive stage scored: ``analysis.ranking_rows``).

  Raises:
    InputError: the history is missing, damaged or empty, or every row failed.
  """
  flag = f"--search_workdir {search_workdir}"
  try:
    rows = analysis.load_history(search_workdir)
  except FileNotFoundError:
    rows = None
  except (OSError, ValueError) as e:
    raise InputError(f"{flag}: {e}; restore history.jsonl") from None
  if not rows:
    raise InputError(f"{flag}: no history rows yet; run (or resume) the search first, or give "
                     "--arch")
  chosen = top_unique(analysis.ranking_rows(rows), top_k)
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


_LAYER = re.compile(r"^(\d+):(\d+)x(\d+)x(\d+)(?:/s(\d+)x(\d+))?(\+pool)?<(img|\d+(?:,\d+)*)$")


def _from_description(text: str, space: cnn.CNNSpace) -> cnn.CNNArch:
  """``CNNSpace.describe``'s form (``0:7x7x32<img 1:7x3x24<0``) -> the architecture."""
  layers, pools = [], []
  for i, part in enumerate(text.split()):
    m = _LAYER.match(part)
    if not m:
      raise ValueError(f"layer {part!r} is not 'INDEX:FHxFWxN<INPUTS' (INPUTS 'img' or "
                       "'0,1'; optional '/sSHxSW' strides and '+pool' after N)")
    if int(m[1]) != i:
      raise ValueError(f"layer {part!r} is numbered {m[1]}, expected {i}")
    inputs = () if m[8] == "img" else tuple(int(j) for j in m[8].split(","))
    layers.append(cnn.Layer(int(m[2]), int(m[3]), int(m[5] or 1), int(m[6] or 1), int(m[4]),
                            inputs))
    if m[7]:
      pools.append(i)
  if not layers:
    raise ValueError("no layers")
  return cnn.CNNArch(tuple(layers), space.convs_per_layer, tuple(pools))


def tokens_of(space: cnn.CNNSpace, arch: cnn.CNNArch) -> list[int]:
  """The tokens that :meth:`CNNSpace.decode` turns into ``arch`` (its inverse).

  Raises:
    ValueError: ``arch`` is not an architecture of ``space`` (a value not among its choices, a
      stride it does not predict, an input that is not an earlier layer, other pooling).
  """
  def index(choices, value, what, i):
    if value not in choices:
      raise ValueError(f"layer {i}: {what} {value} is not one of the space's {list(choices)}")
    return choices.index(value)

  tokens = []
  for i, l in enumerate(arch.layers):
    tokens += [index(space.filter_heights, l.filter_height, "filter height", i),
               index(space.filter_widths, l.filter_width, "filter width", i)]
    if space.predict_strides:
      tokens += [index(space.strides, l.stride_height, "stride height", i),
                 index(space.strides, l.stride_width, "stride width", i)]
    tokens.append(index(space.num_filters, l.num_filters, "number of filters", i))
    if space.skip_connections:
      if any(not 0 <= j < i for j in l.inputs):
        raise ValueError(f"layer {i}: inputs {list(l.inputs)} must be earlier layers (0..{i - 1})")
      tokens += [int(j in l.inputs) for j in range(i)]
  decoded = space.decode(space.plan(len(arch.layers)), np.asarray(tokens, np.int32))
  if decoded != arch:
    raise ValueError(f"it is not an architecture of the space ({space.describe(arch)!r} would be "
                     f"{space.describe(decoded)!r}: strides, inputs, pooling or convs per layer "
                     "differ)")
  return tokens


def parse_arch(text: str, space: cnn.CNNSpace) -> tuple[cnn.CNNArch, list[int]]:
  """An architecture typed on the command line, and its tokens.

  ``text`` is one of: the JSON of an architecture as history rows store it (``{"layers": [...]}``;
  a whole history row also works), a JSON list of tokens (``space.decode``d; the depth follows
  from the length), or :meth:`CNNSpace.describe`'s one-line form, ``0:7x7x32<img 1:7x3x24<0``
  (``FHxFWxN``, optional ``/sSHxSW`` strides and ``+pool``, inputs ``img`` or ``0,1``).

  Raises:
    InputError: ``text`` is none of these, or not an architecture of ``space``.
  """
  text = text.strip()
  try:
    if text.startswith("["):
      tokens = [int(t) for t in json.loads(text)]
      depth = next((n for n in range(1, 257) if base.num_tokens(space.plan(n)) == len(tokens)),
                   None)
      if depth is None:
        raise ValueError(f"{len(tokens)} tokens are no whole number of layers of the space")
      try:
        arch = space.decode(space.plan(depth), np.asarray(tokens, np.int32))
        ok = tokens_of(space, arch) == tokens  # not for a negative token or an anchor bit of 2
      except IndexError:
        ok = False
      if not ok:
        raise ValueError("a token is outside its decision's choices")
    else:
      arch = space.from_json(json.loads(text)) if text.startswith("{") else \
          _from_description(text, space)
    return arch, tokens_of(space, arch)
  except (ValueError, TypeError) as e:
    raise InputError(f"--arch {text[:80]!r}: {e}; give {ARCH_FORMATS}") from None


# ----------------------------------------------------------------------------------------------
# Training one child


def flops(module, variables, input_shape: Sequence[int]) -> int:
  """XLA's FLOP count of one image's inference forward pass (see the module docstring)."""
  x = jnp.zeros((1, *input_shape), jnp.float32)
  cost = jax.jit(lambda v, x: module.apply(v, x)).lower(variables, x).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0]
  return int(cost.get("flops", 0))


def _permutation(key: jax.Array, epoch: int, n: int) -> np.ndarray:
  """The epoch's order of the training set (from ``fold_in(key, epoch)``: the same on resume)."""
  return trainer.host_rng(jax.random.fold_in(key, epoch)).permutation(n)


def _restore(manager, state, child_dir: str):
  """The newest readable checkpoint: ``(epoch, state, meta)``; (0, state, empty meta) if none.

  A checkpoint that does not restore is moved to ``child_dir/checkpoints_unreadable/``.
  """
  for epoch in sorted(manager.all_steps(), reverse=True):
    try:
      r = manager.restore(epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(state),
                                                         meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except  (orbax raises many types)
      aside = os.path.join(child_dir, "checkpoints_unreadable", str(epoch))
      logging.warning("checkpoint of epoch %d is unreadable (%s); moved to %s", epoch,
                      f"{type(e).__name__}: {e}".splitlines()[0][:200], aside)
      shutil.rmtree(aside, ignore_errors=True)
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      shutil.move(os.path.join(os.fspath(manager.directory), str(epoch)), aside)
      manager.reload()
      continue
    return epoch, jax.tree.map(jnp.asarray, r.state), r.meta
  return 0, state, {"val_accuracies": [], "train_losses": [], "seconds": 0.0}


def train_child(model, dataset: data_lib.Dataset, cfg: child_lib.TrainConfig, key: jax.Array,
                child_dir: str, *, keep_checkpoints: int = 2, tensorboard: bool = True,
                name: str = "", log_fn: Callable[[str], None] | None = None) -> dict:
  """Trains ``model`` from scratch (or on from its last checkpoint) and scores it on the test set.

  The epoch loop of ``trainer.fit_classifiers`` with what a final training needs besides: the
  optimiser of ``trainer.make_optimizer`` (``cfg.lr_schedule``); each epoch the mean training
  loss, the validation accuracy, an orbax checkpoint in ``child_dir/checkpoints`` and TensorBoard
  scalars; then the test accuracy of the last epoch's model, saved in ``child_dir/model``.

  Args:
    model: a Flax classifier taking ``(images, train=bool)``.
    dataset: train, validation and test arrays.
    cfg: the final schedule.
    key: PRNG key (split into initialisation, data order and augmentation).
    child_dir: the child's folder; a checkpoint there is resumed.
    keep_checkpoints: epochs whose checkpoints are kept.
    tensorboard: write ``child_dir/tensorboard``.
    name: prefix of the progress lines.
    log_fn: callable(str), one line per epoch.

  Returns:
    ``{"val_accuracy" (the last epoch's), "test_accuracy", "val_accuracies", "train_losses",
    "param_count", "flops", "seconds", "input_shape", "num_classes"}``.

  Raises:
    FloatingPointError: the training loss became NaN/inf.
  """
  steps = trainer.steps_per_epoch(dataset, cfg)
  progs = child_lib._programs(model, cfg, bool(dataset.augment), steps)  # pylint: disable=protected-access
  schedule = trainer.learning_rate(cfg, steps)
  init_key, data_key, aug_key = jax.random.split(key, 3)
  train_x, train_y = jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels)
  val_x, val_y = jnp.asarray(dataset.val_images), jnp.asarray(dataset.val_labels)
  n, bs = train_x.shape[0], min(cfg.batch_size, train_x.shape[0])
  t_start = time.time()
  state = progs.init(init_key, train_x[:1])
  manager = ocp.CheckpointManager(
      os.path.abspath(os.path.join(child_dir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep_checkpoints,
                                           enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True))
  writer = None
  try:
    done, state, meta = _restore(manager, state, child_dir)
    if done:
      logging.info("%sresumed after epoch %d/%d", name, done, cfg.epochs)
    if tensorboard:
      writer = summaries.Writer(child_dir, purge_step=done + 1)
    for epoch in range(done + 1, cfg.epochs + 1):
      t0 = time.time()
      params, batch_stats, opt_state = state
      t_epoch = t_start if epoch == done + 1 else t0  # the first one of a run compiles
      perm, losses = _permutation(data_key, epoch, n), []
      for b in range(steps):
        params, batch_stats, opt_state, loss = progs.train_step(
            params, batch_stats, opt_state, None, train_x, train_y, perm[b * bs:(b + 1) * bs],
            aug_key, (epoch - 1) * steps + b)
        losses.append(loss)
      loss = float(np.mean(jax.device_get(losses)))
      trainer.check_finite(loss, epoch)
      acc = float(trainer.accuracy(progs, params, batch_stats, None, val_x, val_y,
                                   cfg.eval_batch_size))
      state = (params, batch_stats, opt_state)
      lr = float(schedule((epoch - 1) * steps) if callable(schedule) else schedule)
      meta = {"val_accuracies": meta["val_accuracies"] + [acc],
              "train_losses": meta["train_losses"] + [loss],
              "seconds": meta["seconds"] + time.time() - t_epoch}
      manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                  meta=ocp.args.JsonSave(meta)))
      if writer:
        writer.write_step(epoch - 1, {"train/loss": loss, "val/accuracy": acc,
                                      "train/learning_rate": lr})
      if log_fn:
        log_fn(f"{name}epoch {epoch}/{cfg.epochs} loss {loss:.4f} val_acc {acc:.4f} lr {lr:.4g} "
               f"({time.time() - t0:.1f} s)")
    params, batch_stats, _ = state
    t0 = time.time()
    test_acc = float(trainer.accuracy(progs, params, batch_stats, None,
                                      jnp.asarray(dataset.test_images),
                                      jnp.asarray(dataset.test_labels), cfg.eval_batch_size))
    variables = {"params": params, "batch_stats": batch_stats}
    ocp.Checkpointer(ocp.StandardCheckpointHandler()).save(
        os.path.abspath(os.path.join(child_dir, "model")), args=ocp.args.StandardSave(variables),
        force=True)
    if writer:
      writer.write_step(cfg.epochs - 1, {"test/accuracy": test_acc})
    input_shape = list(dataset.train_images.shape[1:])
    return {"val_accuracy": meta["val_accuracies"][-1], "test_accuracy": test_acc,
            "val_accuracies": meta["val_accuracies"], "train_losses": meta["train_losses"],
            "param_count": int(sum(p.size for p in jax.tree.leaves(params))),
            "flops": flops(model, variables, input_shape),
            "seconds": round(meta["seconds"] + time.time() - t0, 3),
            "input_shape": input_shape, "num_classes": int(dataset.num_classes)}
  finally:
    if writer:
      writer.close()
    manager.close()


# ----------------------------------------------------------------------------------------------
# The output directory and the whole run


class Plan(NamedTuple):
  """What :func:`run` will do, every input checked (:func:`plan`); nothing is written yet."""
  out_dir: str
  final: Final
  space: cnn.CNNSpace
  children: list[Child]
  source_workdir: str | None
  split_seed: int
  record: dict                  # config.json of the output directory


def plan(cfg: ml_collections.ConfigDict, out_dir: str | None = None, *,
         search_workdir: str | None = None, arch: str | None = None, top_k: int = 1) -> Plan:
  """Checks every input of :func:`run` (reading only) and says what it will train.

  Raises:
    InputError: a bad flag, search workdir, ``--arch`` or output directory (the message names the
      flag and the fix).
    ConfigError: a bad field of the final config.
  """
  final = parse_final(cfg)
  if not search_workdir and not arch:
    raise InputError("give --search_workdir (a CNN search's workdir: its best architectures are "
                     f"retrained) or --arch ({ARCH_FORMATS})")
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
    arch_obj, tokens = parse_arch(arch, space)
    reward = None
    if search_workdir:  # the architecture's best reward in that search, if it was evaluated
      with contextlib.suppress(OSError, ValueError):
        same = [r for r in top_unique(analysis.load_history(search_workdir), 10**9)
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
  config = json.loads(json.dumps(cfg.to_dict()))
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
  """Creates ``out_dir`` and holds its ``.lock`` (one run at a time)."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, ".lock"), "a+") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise InputError(f"--workdir {out_dir} is in use by another train_child.py; wait for it "
                       "or use another --workdir") from None
    yield


def _write_json(path: str, obj) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(path + ".tmp", path)


def run(cfg: ml_collections.ConfigDict, out_dir: str | None = None, *,
        search_workdir: str | None = None, arch: str | None = None, top_k: int = 1,
        dataset: data_lib.Dataset | None = None,
        log_fn: Callable[[str], None] | None = None) -> dict:
  """Retrains the chosen architectures from scratch with the final config ``cfg``.

  Rerunning the same call continues where a killed one stopped (finished children are kept, an
  unfinished one goes on from its last epoch) and gives the same numbers as one run.

  Args:
    cfg: a final config (:func:`default_final_config`, ``nas_jax/configs/cnn_*_final.py``).
    out_dir: the output directory; default ``search_workdir/retrain``.
    search_workdir: a CNN search's workdir: its space (``config.json``) and, without ``arch``,
      its ``top_k`` best unique architectures (``history.jsonl``, :func:`top_unique`).
    arch: an architecture (:func:`parse_arch`'s forms); its space is the search workdir's, or
      without one ``cfg.search_space``.
    top_k: how many of the search's best architectures.
    dataset: the data (default: ``cfg.data`` split with ``split_seed``).
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
  p = plan(cfg, out_dir, search_workdir=search_workdir, arch=arch, top_k=top_k)
  if dataset is None:
    dataset = data_lib.load(p.final.data, p.split_seed)
  with _locked(p.out_dir):
    _check_out_dir(p.out_dir, p.record)  # again, under the lock
    config_path = os.path.join(p.out_dir, "config.json")
    if not os.path.exists(config_path):
      _write_json(config_path, p.record)
    root = jax.random.key(p.final.seed)
    results = []
    for c in p.children:
      child_dir = os.path.join(p.out_dir, f"rank{c.rank}")
      result_path = os.path.join(child_dir, "result.json")
      if os.path.exists(result_path):
        with open(result_path) as f:
          results.append(json.load(f))
        continue
      if log_fn:
        log_fn(f"rank {c.rank}/{len(p.children)}: {c.description} (search reward "
               f"{'-' if c.search_reward is None else f'{c.search_reward:.4f}'})")
      model = p.space.build(p.space.from_json(c.arch), dataset.num_classes)
      out = train_child(model, dataset, p.final.train, jax.random.fold_in(root, c.rank),
                        child_dir, keep_checkpoints=p.final.keep_checkpoints,
                        tensorboard=p.final.tensorboard, name=f"rank {c.rank} ", log_fn=log_fn)
      result = {**c._asdict(), **out}
      _write_json(result_path, result)
      if log_fn:
        log_fn(f"rank {c.rank}: val_acc {out['val_accuracy']:.4f} test_acc "
               f"{out['test_accuracy']:.4f} params {out['param_count']:,} flops "
               f"{out['flops']:,} ({out['seconds']:.0f} s)")
      results.append(result)
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
  from nas_jax.tools import report  # pylint: disable=import-outside-toplevel  (matplotlib)
  child_dir = os.path.join(out_dir, f"rank{rank}")
  result_path = os.path.join(child_dir, "result.json")
  if not os.path.exists(result_path):
    raise FileNotFoundError(f"{result_path}: rank {rank} has not finished training in {out_dir}")
  with open(os.path.join(out_dir, "config.json")) as f:
    record = json.load(f)
  with open(result_path) as f:
    result = json.load(f)
  run_space = report.run_space({f"search_space.{k}": v for k, v in
                                record["config"]["search_space"].items()})
  if run_space.space is None:
    raise ValueError(f"{out_dir}/config.json: {run_space.why}")
  module = run_space.space.build(run_space.space.from_json(result["arch"]), result["num_classes"])
  target = jax.eval_shape(lambda: module.init(jax.random.key(0),
                                              jnp.zeros((1, *result["input_shape"]))))
  variables = ocp.Checkpointer(ocp.StandardCheckpointHandler()).restore(
      os.path.abspath(os.path.join(child_dir, "model")), args=ocp.args.StandardRestore(target))
  return module, variables
