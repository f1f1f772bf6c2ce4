"""A language model trained in a workdir of its own (``nas-jax train-lm``), as a search is: one run
at a time, its config recorded and checked, a checkpoint after every epoch, exact resume.

The workdir:

* ``config.json``: the LM config (a rerun with another config is refused, nothing changed);
* ``.lock``: held while the run trains (a second run on the workdir is refused);
* ``checkpoints/``: the train state, the step count and the epochs' history after each epoch
  (orbax); a rerun of the same command continues after the newest readable one (an unreadable one
  is moved to ``checkpoints_unreadable/``) and ends with the numbers of an uninterrupted run;
* ``metrics.json``: per-epoch perplexities, tokens/s, test perplexity, written last (a workdir
  with it is done: a rerun returns it).

Ctrl-C stops the run once the epoch in training is checkpointed (a second Ctrl-C at once), as
the searches do (:class:`nas_jax.core.loop.Interrupt`).
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax
import orbax.checkpoint as ocp
from absl import logging

from nas_jax.core import loop, workdir as workdir_lib
from nas_jax.errors import WorkdirError, WorkdirMismatchError
from nas_jax.training import lm, lm_cells, ptb

RESUMABLE = ("data.data_dir",)   # fields that may change on a rerun


def _io(what: str, path: str, e: OSError) -> WorkdirError:
  return WorkdirError(f"cannot {what} {path}: {e.strerror or e} (errno {e.errno}); give a "
                      "--workdir you can write to")


def _check_record(workdir: str, record: dict) -> None:
  """Refuses (reading only) a workdir that is a file or holds a run of another config."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir {workdir}: a file, not a directory; give a directory")
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    if os.path.exists(os.path.join(workdir, "checkpoints")):
      raise WorkdirMismatchError(f"workdir {workdir} has checkpoints but no config.json; use a "
                                 "new --workdir")
    return
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(f"cannot read {path} ({e}); restore it or use a new --workdir") from None
  diffs = sorted(k for k in set(old) | set(record)
                 if k not in RESUMABLE and old.get(k) != record.get(k))
  if diffs:
    shown = "; ".join(f"config.{k}: it has {old.get(k)!r}, now {record.get(k)!r}"
                      for k in diffs[:3])
    raise WorkdirMismatchError(f"workdir {workdir} holds a run of another config ({shown}); use "
                               "a new --workdir or the same config")


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
  return out


def _restore(manager, target: lm.Progress, workdir: str) -> lm.Progress | None:
  """The newest readable checkpoint as progress (None: none); unreadable ones moved aside."""
  for epoch in sorted(manager.all_steps(), reverse=True):
    try:
      r = manager.restore(epoch, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target.state), meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except  (orbax raises many types)
      workdir_lib.move_aside(os.path.join(os.fspath(manager.directory), str(epoch)), workdir,
                             f"epoch {epoch}", e)
      manager.reload()
      continue
    return lm.Progress(epoch, jax.tree.map(jax.numpy.asarray, r.state), r.meta["step"],
                       r.meta["history"])
  return None


def run(cfg, workdir: str, *, log_fn: Callable[[str], None] | None = None) -> dict:
  """Trains (or resumes, or reads back) the LM of the config ``cfg`` in ``workdir``.

  ``cfg``: ``seed``, ``cell`` (``lstm``, ``nascell`` or a cell search's ``summary.json``),
  ``data`` (``level``, ``data_dir``) and ``lm`` (``nas_jax.training.lm.LMConfig``'s fields), as
  ``nas_jax/configs/lm_ptb_*.py`` give. Returns what ``metrics.json`` holds.

  Raises:
    WorkdirError: the workdir cannot be used (a file, unwritable, in use, unreadable files);
      WorkdirMismatchError: it holds another config's run. Nothing is written before the config,
      the cell and the data are known good.
    ValueError: a bad cell or LM field.
  """
  record = json.loads(json.dumps(_flat(cfg.to_dict())))
  lm_cfg = lm.LMConfig(**cfg.lm.to_dict())
  cell, ops, cell_desc = lm_cells.from_name(cfg.cell, cfg.lm.init_scale)
  _check_record(workdir, record)
  corpus = ptb.load_ptb(cfg.data.level, cfg.data.data_dir or None)
  metrics_path = os.path.join(workdir, "metrics.json")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise _io("create", workdir, e) from None
  try:
    lock = workdir_lib.take_lock(os.path.join(workdir, ".lock"), lambda holder: WorkdirError(
        f"workdir {workdir} is in use by another train-lm (pid {holder}); wait for it or use "
        "another --workdir"), mark=False)
  except OSError as e:
    raise _io("lock", os.path.join(workdir, ".lock"), e) from None
  with lock:
    _check_record(workdir, record)   # again, under the lock
    workdir_lib.mark_lock(lock)
    if os.path.exists(metrics_path):
      with open(metrics_path) as f:
        return json.load(f)
    if not os.path.exists(os.path.join(workdir, "config.json")):
      _write_json(os.path.join(workdir, "config.json"), record)
    key = jax.random.key(cfg.seed)
    manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False,
                                             cleanup_tmp_directories=True))
    try:
      start = _restore(manager, lm.initial_progress(corpus, cell, lm_cfg, key), workdir)
      if start is not None:
        logging.info("resumed after epoch %d/%d", start.epoch, lm_cfg.epochs)

      def save(p: lm.Progress) -> None:
        with interrupt.writing():
          manager.save(p.epoch, args=ocp.args.Composite(
              state=ocp.args.StandardSave(p.state),
              meta=ocp.args.JsonSave({"step": p.step, "history": p.history})))
        interrupt.check()   # Ctrl-C stops here, the epoch saved

      logging.info("cell %s | %s | vocab %d | train tokens %d", cfg.cell, cell_desc,
                   len(corpus.vocab), len(corpus.train))
      with loop.Interrupt("the epoch in training is checkpointed") as interrupt:
        result = lm.train(corpus, cell, lm_cfg, key, ops=ops, log_fn=log_fn, start=start,
                          on_epoch=save)
    finally:
      manager.close()
    n_params = lm_cells.cell_param_count(cfg.cell, result.params)
    metrics = {"cell": cfg.cell, "cell_description": cell_desc, "params": int(n_params),
               "epochs": result.history, "best_valid_ppl": result.valid_ppl,
               "test_ppl": result.test_ppl, "config": cfg.to_dict(),
               "train_seconds": sum(h["seconds"] for h in result.history),
               "tokens_per_sec": (sum(h["tokens_per_sec"] for h in result.history)
                                  / len(result.history))}
    _write_json(metrics_path, metrics)
  return metrics


def _write_json(path: str, obj) -> None:
  try:
    with open(path + ".tmp", "w") as f:
      json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)
  except OSError as e:
    raise _io("write", path, e) from None
