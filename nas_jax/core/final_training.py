"""One found CNN trained from scratch with a final schedule, resumable per epoch, scored on the
test set: the child of :mod:`nas_jax.core.retrain` (which chooses the architectures and owns the
output directory).

The data order is ``fold_in(key, epoch)`` and the state is restored exactly, so a run killed
after any epoch and rerun ends with the numbers of an uninterrupted one. FLOPs are XLA's count
(:func:`nas_jax.training.trainer.flops`).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from nas_jax.core import loop, summaries, workdir as workdir_lib
from nas_jax.training import child as child_lib, data as data_lib, optim, trainer


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
      workdir_lib.move_aside(os.path.join(os.fspath(manager.directory), str(epoch)), child_dir,
                             f"epoch {epoch}", e)
      manager.reload()
      continue
    return epoch, jax.tree.map(jnp.asarray, r.state), r.meta
  return 0, state, {"val_accuracies": [], "train_losses": [], "seconds": 0.0}


def train_child(model, dataset: data_lib.Dataset, cfg: child_lib.TrainConfig, key: jax.Array,
                child_dir: str, *, keep_checkpoints: int = 2, tensorboard: bool = True,
                name: str = "", log_fn: Callable[[str], None] | None = None,
                interrupt: loop.Interrupt | None = None) -> dict:
  """Trains ``model`` from scratch (or on from its last checkpoint) and scores it on the test set.

  The epoch loop of ``trainer.fit_classifiers`` with what a final training needs besides: the
  optimiser of ``optim.child_optimizer`` (``cfg.lr_schedule``); each epoch the mean training
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
    interrupt: a :class:`nas_jax.core.loop.Interrupt` checked after each epoch's checkpoint (a
      Ctrl-C then stops there, never in the middle of a write).

  Returns ``{"val_accuracy" (the last epoch's), "test_accuracy", "val_accuracies",
  "train_losses", "param_count", "flops", "seconds", "input_shape", "num_classes"}``; raises
  FloatingPointError if the training loss became NaN/inf.
  """
  steps = trainer.steps_per_epoch(dataset, cfg)
  progs = child_lib._programs(  # pylint: disable=protected-access
      model, cfg, bool(dataset.augment), steps)
  schedule = optim.child_learning_rate(cfg, steps)
  init_key, data_key, aug_key = jax.random.split(key, 3)
  train_x, train_y = jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels)
  val_x, val_y = jnp.asarray(dataset.val_images), jnp.asarray(dataset.val_labels)
  n = train_x.shape[0]
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
    for ep in trainer.train_epochs(progs, state, cfg, train_x, train_y,
                                   lambda epoch: [_permutation(data_key, epoch, n)], aug_key,
                                   first=done + 1):
      epoch, state, t0 = ep.number, ep.state, ep.started
      t_epoch = t_start if epoch == done + 1 else t0  # the first one of a run compiles
      loss = float(np.mean(jax.device_get(ep.losses)))
      trainer.check_finite(loss, epoch)
      params, batch_stats, _ = state
      acc = float(trainer.accuracy(progs, params, batch_stats, None, val_x, val_y,
                                   cfg.eval_batch_size))
      lr = float(schedule((epoch - 1) * steps) if callable(schedule) else schedule)
      meta = {"val_accuracies": meta["val_accuracies"] + [acc],
              "train_losses": meta["train_losses"] + [loss],
              "seconds": meta["seconds"] + time.time() - t_epoch}
      with interrupt.writing() if interrupt is not None else contextlib.nullcontext():
        manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)))
      if writer:
        writer.write_step(epoch - 1, {"train/loss": loss, "val/accuracy": acc,
                                      "train/learning_rate": lr})
      if log_fn:
        log_fn(f"{name}epoch {epoch}/{cfg.epochs} loss {loss:.4f} val_acc {acc:.4f} lr {lr:.4g} "
               f"({time.time() - t0:.1f} s)")
      if interrupt is not None:
        interrupt.check()   # a Ctrl-C stops here, with this epoch checkpointed
    return _test_and_save(model, progs, state, meta, dataset, cfg, child_dir, writer)
  finally:
    if writer:
      writer.close()
    manager.close()




def _test_and_save(model, progs, state, meta, dataset, cfg, child_dir, writer) -> dict:
  """The trained model's test accuracy, its variables saved in ``child_dir/model``, the result."""
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
          "flops": trainer.flops(model, variables, input_shape),
          "seconds": round(meta["seconds"] + time.time() - t0, 3),
          "input_shape": input_shape, "num_classes": int(dataset.num_classes)}
