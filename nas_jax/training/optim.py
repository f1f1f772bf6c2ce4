"""Optimisers and learning-rate schedules: the child trainer's, the shared networks' and the
language models', in one module.

* children (the paper's Section 4.1): SGD with Nesterov momentum and weight decay,
  :func:`child_optimizer`, its rate per ``TrainConfig.lr_schedule`` (:func:`child_learning_rate`);
* shared networks (``config.shared``, ENAS's): the same SGD with the gradient norm clipped, the
  rate constant, cosine or SGDR (:func:`shared_optimizer`, :func:`shared_learning_rate`);
* language models (Zaremba et al.): a per-epoch decay (:func:`lm_learning_rate`); their update,
  SGD or Adam's moments (:func:`lm_adam`) with decoupled weight decay, is applied inside
  ``nas_jax.training.lm``'s train step (sparse embedding rows).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


CHILD_LR_SCHEDULES = ("constant", "step", "cosine")
LM_OPTIMIZERS = ("sgd", "adam")


def child_learning_rate(cfg, steps_per_epoch: int | None) -> optax.ScalarOrSchedule:
  """``cfg.learning_rate`` under ``cfg.lr_schedule`` (see ``TrainConfig``), per optimiser step.

  ``"step"`` divides the rate by 10 at 50% and at 75% of ``cfg.epochs`` (DenseNet's recipe, which
  the paper's child training follows); ``"cosine"`` decays it to 0 over the epochs.
  """
  if cfg.lr_schedule == "constant":
    return cfg.learning_rate
  if cfg.lr_schedule not in CHILD_LR_SCHEDULES:
    raise ValueError(f"config.child.lr_schedule={cfg.lr_schedule!r}: one of {CHILD_LR_SCHEDULES}")
  if not steps_per_epoch:
    raise ValueError(f"lr_schedule={cfg.lr_schedule!r} needs the number of steps per epoch")
  total = cfg.epochs * steps_per_epoch
  if cfg.lr_schedule == "cosine":
    return optax.cosine_decay_schedule(cfg.learning_rate, total)
  return optax.piecewise_constant_schedule(
      cfg.learning_rate, {total // 2: 0.1, total * 3 // 4: 0.1})


def child_optimizer(cfg,
                   steps_per_epoch: int | None = None) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum and weight decay: the paper's child optimiser (Section 4.1).

  The learning rate follows ``cfg.lr_schedule`` (:func:`child_learning_rate`); a schedule other than
  ``"constant"`` needs ``steps_per_epoch``.
  """
  return optax.chain(
      optax.add_decayed_weights(cfg.weight_decay),
      optax.sgd(child_learning_rate(cfg, steps_per_epoch), momentum=cfg.momentum,
                nesterov=cfg.nesterov))


def shared_learning_rate(cfg, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  """``config.shared``'s learning rate per training step: constant, cosine to ``lr_min``, or
  SGDR (Loshchilov & Hutter 2017; ENAS's): cosine periods of ``lr_t0`` epochs, each next one
  ``lr_t_mul`` times longer, restarting at ``learning_rate``."""
  hi, lo = cfg.learning_rate, cfg.lr_min
  if cfg.lr_schedule == "constant":
    return optax.constant_schedule(hi)
  if cfg.lr_schedule == "cosine":
    return lambda t: lo + (hi - lo) * 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(
        t / max(total_steps, 1), 1.0)))

  def sgdr(t):
    epoch = t / steps_per_epoch
    t0, mul = float(cfg.lr_t0), float(cfg.lr_t_mul)
    if mul == 1:
      k = jnp.floor(epoch / t0)
      start, period = k * t0, t0
    else:  # periods t0, t0*mul, ...; period k starts at t0 (mul^k - 1) / (mul - 1)
      k = jnp.floor(jnp.log1p(epoch * (mul - 1) / t0) / jnp.log(mul))
      start, period = t0 * (mul ** k - 1) / (mul - 1), t0 * mul ** k
    frac = jnp.clip((epoch - start) / period, 0.0, 1.0)
    return lo + (hi - lo) * 0.5 * (1 + jnp.cos(jnp.pi * frac))
  return sgdr


def shared_optimizer(cfg, steps_per_epoch: int, total_steps: int) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum and weight decay, the gradient norm clipped (``grad_clip``)."""
  parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
  return optax.chain(*parts, optax.add_decayed_weights(cfg.weight_decay),
                     optax.sgd(shared_learning_rate(cfg, steps_per_epoch, total_steps),
                               momentum=cfg.momentum, nesterov=cfg.nesterov))


def lm_learning_rate(cfg, epoch: int) -> float:
  """Zaremba et al.'s schedule; ``epoch`` counts from 1."""
  return cfg.learning_rate * cfg.lr_decay ** max(epoch - cfg.decay_after_epoch, 0)


def lm_adam() -> optax.GradientTransformation:
  return optax.scale_by_adam()
