"""TensorBoard scalars of a search, written with tensorboardX (no TensorFlow needed).

One point per controller step, under ``WORKDIR/tensorboard`` (``config.search.tensorboard``):

* ``controller/loss``, ``controller/entropy``, ``controller/baseline``, ``controller/grad_norm``
  (REINFORCE only, except entropy);
* ``reward/mean``, ``reward/max``, ``reward/best_so_far``;
* ``child/val_accuracy_mean`` and ``child/val_accuracy_max`` (CNN children) or
  ``child/val_ppl_median`` and ``child/val_ppl_min`` (language-model children), over the step's
  children that did not fail; ``child/failed``;
* ``speed/children_per_hour`` (this run's children over its wall time) and the step's
  ``speed/controller_seconds`` and ``speed/children_seconds``.

View with ``tensorboard --logdir WORKDIR/tensorboard`` (``pip install tensorboard``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time

import numpy as np

SUBDIR = "tensorboard"


def step_scalars(step_row: dict, children: list[dict], best_reward: float | None,
                 children_per_hour: float | None, metric=None) -> dict[str, float]:
  """The scalars of one controller step.

  Args:
    step_row: the step's row of ``steps.jsonl`` (reward_mean, entropy, loss, baseline, ...).
    children: the step's history rows.
    best_reward: the best reward of the search so far.
    children_per_hour: this run's throughput.
    metric: the :class:`~nas_jax.spaces.base.Metric` of the children (default: accuracy): the
      mean and max over the step of a metric to maximise, the median and min of one to minimise.
  """
  out = {}
  for key, name in (("loss", "controller/loss"), ("entropy", "controller/entropy"),
                    ("baseline", "controller/baseline"), ("grad_norm", "controller/grad_norm"),
                    ("reward_mean", "reward/mean"), ("reward_max", "reward/max"),
                    ("controller_seconds", "speed/controller_seconds"),
                    ("children_seconds", "speed/children_seconds")):
    if step_row.get(key) is not None:
      out[name] = float(step_row[key])
  ok = [r for r in children if not r["failed"]]
  out["child/failed"] = float(len(children) - len(ok))
  name, higher = metric or ("val_accuracy", True)
  values = [r[name] for r in ok if r.get(name) is not None]
  if values:
    center, extreme = (("mean", np.mean), ("max", np.max)) if higher else (("median", np.median),
                                                                           ("min", np.min))
    out[f"child/{name}_{center[0]}"] = float(center[1](values))
    out[f"child/{name}_{extreme[0]}"] = float(extreme[1](values))
  if best_reward is not None:
    out["reward/best_so_far"] = float(best_reward)
  if children_per_hour:
    out["speed/children_per_hour"] = float(children_per_hour)
  return {k: v for k, v in out.items() if math.isfinite(v)}


def _summary_writer_class():
  """tensorboardX's ``SummaryWriter``, imported without PyTorch.

  Where PyTorch is installed, importing tensorboardX imports it too, only to accept torch tensors
  (which this module never writes): ~350 MB more resident memory and ~1 s for a search process.
  A process that has imported torch already gets the plain import.
  """
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # `import torch` raises ImportError; tensorboardX handles that
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter
  sys.modules["torch"] = None  # `import torch` raises ImportError; tensorboardX handles that
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class Writer:
  """Writes :func:`step_scalars` to ``workdir/tensorboard`` at global step = controller step + 1."""

  def __init__(self, workdir: str, purge_step: int | None = None):
    """``purge_step``: TensorBoard hides points at this global step and later from earlier event
    files (a resumed search redoes the steps after its checkpoint)."""
    self.logdir = os.path.join(workdir, SUBDIR)
    # tensorboardX names event files by the second: a suffix keeps a rerun within it apart.
    self._writer = _summary_writer_class()(self.logdir, purge_step=purge_step,
                                 filename_suffix=f".{time.time_ns()}")

  def write_step(self, step: int, scalars: dict[str, float]) -> None:
    for name, value in scalars.items():
      self._writer.add_scalar(name, value, global_step=step + 1)
    self._writer.flush()

  def write_text(self, tag: str, record: dict) -> None:
    """``record`` (flat ``key: value``) as a markdown table under ``tag`` (the text tab)."""
    rows = "\n".join(f"| {k} | {json.dumps(v)} |" for k, v in sorted(record.items()))
    self._writer.add_text(tag, f"| field | value |\n|---|---|\n{rows}", global_step=0)
    self._writer.flush()

  def close(self) -> None:
    """Flushes and closes the event file. Where the disk refuses the last events (full, or a
    file-size limit), they are given up and the OSError raised: tensorboardX's exit hook would
    otherwise try them again at interpreter exit and print a traceback after the search's
    one-line error."""
    try:
      self._writer.close()
    except OSError:
      for fw in (getattr(self._writer, "all_writers", None) or {}).values():
        ew = getattr(fw, "event_writer", None)
        if ew is not None:
          with contextlib.suppress(Exception):
            ew._worker.stop()  # pylint: disable=protected-access
          ew._closed = True    # pylint: disable=protected-access  (the exit hook's test)
      raise
