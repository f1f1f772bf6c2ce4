"""Training the m CNN children of a controller step together: one masked max-size network, vmapped.

Every child of a given depth is the same :class:`~nas_jax.spaces.masked_cnn.MaskedCNN` with its
architecture as masks (a :class:`~nas_jax.spaces.masked_cnn.MaskedArch`, an argument of the
programs), so the m children of a step train in one program of
:func:`nas_jax.training.trainer.classifier_programs` with a children axis, compiled once per depth
(and m) for the whole search; with several devices the children axis is split over them.
"""

from __future__ import annotations

import functools
import time
from typing import Sequence

import jax

from nas_jax.training import child, data as data_lib, trainer
from nas_jax.spaces.cnn import CNNArch, CNNSpace
from nas_jax.spaces.masked_cnn import MaskedCNN, exact_param_count, stack_archs


@functools.lru_cache(maxsize=32)
def programs(net: MaskedCNN, cfg: child.TrainConfig, augment: bool,
             devices: tuple = (), steps_per_epoch: int | None = None) -> trainer.Programs:
  """The vmapped, jitted programs of ``net`` (cached: one compilation per depth and m).

  Every per-child argument has a leading axis m: ``init(keys_M, marcs)``, ``train_step(params,
  batch_stats, opt_state, marcs, images, labels, idx_MxB, keys_M, step)``, ``eval_step(params,
  batch_stats, marcs, images, labels, idx_B, valid_B) -> correct_M``. With several ``devices``
  each runs its m / len(devices) children (:func:`nas_jax.training.trainer.children_map`).
  """

  def apply(params, batch_stats, marc, x, train, rng):
    del rng  # the masked network has no stochastic layer
    return net.apply(params, batch_stats, marc, x, train=train)

  return trainer.classifier_programs(net.init, apply, cfg, augment, children=True,
                                     devices=devices, steps_per_epoch=steps_per_epoch)


def evaluate_masked(space: CNNSpace, archs: Sequence[CNNArch], dataset: data_lib.Dataset,
                    cfg: child.TrainConfig, keys: Sequence[jax.Array], *,
                    conv_batching: str = "unrolled", devices: Sequence = (),
                    log_fn=None) -> list[trainer.ChildResult]:
  """Trains the m children ``archs`` together in one vmapped masked program; their rewards.

  Per child the semantics of :func:`nas_jax.training.child.evaluate` (paper, Section 4.1):
  ``cfg.epochs`` epochs over a random permutation of the training set drawn from the child's key,
  SGD with Nesterov momentum and weight decay, reward = (max validation accuracy of the last
  ``reward_last_epochs`` epochs) ** ``reward_power``. A child whose loss becomes NaN/inf is
  returned failed with reward 0 while the others keep training.

  Args:
    space: the CNN search space (``predict_strides`` unsupported).
    archs: m decoded architectures, all of the same depth.
    dataset: train/validation arrays (see ``nas_jax.training.data``).
    cfg: training hyperparameters.
    keys: one PRNG key per child; the same key gives the same child whatever its neighbours.
    conv_batching: "unrolled" (m convs in the program) or "grouped" (vmap's grouped conv).
    devices: local devices to split the children over (default: one device); m is padded to a
      multiple of their number with copies of the last child, whose results are dropped. The
      dataset's arrays should be replicated on them (``NamedSharding(trainer.children_mesh(
      devices), PartitionSpec())``), or each step copies them.
    log_fn: optional callable(str) for per-epoch progress.

  Returns:
    One :class:`~nas_jax.training.trainer.ChildResult` per arch, in order, ``metrics`` holding
    ``val_accuracy`` and ``val_accuracies``; ``param_count`` is the exact child's and ``seconds``
    the call's wall time divided by m.

  Raises:
    ValueError: archs of different depths, or a space/arch the masked network cannot express.
  """
  if not archs:
    return []
  depths = sorted({len(a.layers) for a in archs})
  if len(depths) != 1:
    raise ValueError(f"evaluate_masked needs archs of one depth, got depths {depths}")
  if len(keys) != len(archs):
    raise ValueError(f"{len(archs)} archs but {len(keys)} keys")
  t0 = time.time()
  m = len(archs)
  devices = tuple(devices) if len(devices) > 1 else ()
  pad = -m % max(len(devices), 1)
  archs, keys = list(archs) + [archs[-1]] * pad, list(keys) + [keys[-1]] * pad
  image_shape = tuple(int(d) for d in dataset.train_images.shape[1:])
  net = MaskedCNN(space, depths[0], image_shape, dataset.num_classes, conv_batching)
  marcs = stack_archs([net.encode(a) for a in archs])
  counts = [exact_param_count(a, image_shape[2], dataset.num_classes) for a in archs[:m]]
  steps = trainer.steps_per_epoch(dataset, cfg)
  fit = trainer.fit_classifiers(lambda: programs(net, cfg, bool(dataset.augment), devices, steps),
                                dataset, cfg, keys, arch=marcs, init_input=marcs, children=True,
                                num_children=m, log_fn=log_fn)
  return trainer.classifier_results(fit, cfg, (time.time() - t0) / m, counts)
