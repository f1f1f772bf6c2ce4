"""The search configuration: defaults (the paper's CIFAR-10 settings), validation, conversion.

Experiment files under ``experiments/configs/`` start from :func:`default_config` (locked, so a
misspelt key fails at once) and change fields. :func:`validate` checks every field's type and range
and raises :class:`ConfigError` naming the field and the fix.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from nas_jax import child, controller, reinforce
from nas_jax.search_spaces import make_space


class ConfigError(ValueError):
  """A bad config value; the message names the field and how to fix it."""


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(
      name="cifar10", data_dir="", num_validation=0, max_train=0))
  c.search_space = ml_collections.ConfigDict(dict(
      name="cnn",
      filter_heights=(1, 3, 5, 7), filter_widths=(1, 3, 5, 7),
      num_filters=(24, 36, 48, 64), strides=(1, 2, 3), predict_strides=False,
      skip_connections=True, start_layers=6, layers_increment=2, increment_every=1600,
      max_layers=0, convs_per_layer=1, pool_after_layers=()))
  c.child = ml_collections.ConfigDict(dict(
      executor="exact", epochs=50, batch_size=128, learning_rate=0.1, momentum=0.9,
      nesterov=True, weight_decay=1e-4, reward_last_epochs=5, reward_power=3.0,
      eval_batch_size=500, fast_compile=False))
  c.controller = ml_collections.ConfigDict(dict(
      hidden_size=35, num_lstm_layers=2, init_scale=0.08, learning_rate=6e-4,
      baseline_decay=0.95, entropy_weight=0.0,
      temperature=ml_collections.FieldReference(None, field_type=float),
      tanh_constant=ml_collections.FieldReference(None, field_type=float)))
  c.search = ml_collections.ConfigDict(dict(
      searcher="reinforce", num_steps=1600, children_per_step=8, keep_checkpoints=3,
      verbose=False))
  c.lock()
  return c


# Fields that may change between a run and its resumption (they do not change what is computed).
RESUMABLE_CHANGES = ("search.num_steps", "search.keep_checkpoints", "search.verbose",
                     "data.data_dir")

_POSITIVE_INT = ("search_space.start_layers", "search_space.increment_every",
                 "search_space.convs_per_layer", "child.epochs", "child.batch_size",
                 "child.reward_last_epochs", "child.eval_batch_size", "controller.hidden_size",
                 "controller.num_lstm_layers", "search.num_steps", "search.children_per_step",
                 "search.keep_checkpoints")
_NON_NEGATIVE = ("search_space.layers_increment", "search_space.max_layers", "data.num_validation",
                 "data.max_train", "child.weight_decay", "controller.entropy_weight")
_POSITIVE = ("child.learning_rate", "child.reward_power", "controller.init_scale",
             "controller.learning_rate", "controller.temperature", "controller.tanh_constant")
_CHOICE_LISTS = ("search_space.filter_heights", "search_space.filter_widths",
                 "search_space.num_filters", "search_space.strides")
_ENUMS = {"child.executor": ("exact",), "search.searcher": ("reinforce", "random"),
          "data.name": ("digits", "cifar10")}


def flatten(cfg, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in cfg.items():
    if isinstance(v, ml_collections.ConfigDict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _check_type(name: str, value, default):
  if default is None or value is None:
    return
  if isinstance(default, bool):
    ok = isinstance(value, bool)
  elif isinstance(default, int):
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif isinstance(default, float):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  elif isinstance(default, (list, tuple)):
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(x, int) and not isinstance(x, bool) for x in value)
  else:
    ok = isinstance(value, type(default))
  if not ok:
    kind = "a list of ints" if isinstance(default, (list, tuple)) else type(default).__name__
    raise ConfigError(f"config.{name}: expected {kind}, got {value!r}; set it like the default "
                      f"({default!r})")


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for unknown keys, wrong types and out-of-range values."""
  defaults = flatten(default_config())
  values = flatten(cfg)
  for name in values:
    if name not in defaults:
      section = name.rsplit(".", 1)[0] if "." in name else ""
      known = sorted(k for k in defaults if k.rsplit(".", 1)[0] == section) if section else []
      raise ConfigError(f"config.{name}: unknown key; remove it or use one of "
                        f"{', '.join(known) or sorted(defaults)}")
  for name, default in defaults.items():
    if name not in values:
      raise ConfigError(f"config.{name}: missing; start the config from "
                        "nas_jax.config.default_config()")
    _check_type(name, values[name], default)
  for name in _POSITIVE_INT:
    if values[name] < 1:
      raise ConfigError(f"config.{name}: must be >= 1, got {values[name]}")
  for name in _NON_NEGATIVE:
    if values[name] < 0:
      raise ConfigError(f"config.{name}: must be >= 0, got {values[name]}")
  for name in _POSITIVE:
    v = values[name]
    if v is not None and not (v > 0 and math.isfinite(v)):
      raise ConfigError(f"config.{name}: must be a finite number > 0, got {v}")
  for name in _CHOICE_LISTS:
    v = values[name]
    if not v:
      raise ConfigError(f"config.{name}: empty choice list; give at least one value, "
                        f"e.g. {defaults[name]}")
    if any(x < 1 for x in v):
      raise ConfigError(f"config.{name}: every choice must be >= 1, got {list(v)}")
  for name, allowed in _ENUMS.items():
    if values[name] not in allowed:
      raise ConfigError(f"config.{name}: {values[name]!r} is not one of {list(allowed)}")
  if not 0 <= values["controller.baseline_decay"] < 1:
    raise ConfigError("config.controller.baseline_decay: must be in [0, 1), got "
                      f"{values['controller.baseline_decay']}")
  if not 0 <= values["child.momentum"] < 1:
    raise ConfigError(f"config.child.momentum: must be in [0, 1), got {values['child.momentum']}")
  if values["child.reward_last_epochs"] > values["child.epochs"]:
    raise ConfigError("config.child.reward_last_epochs: must be <= config.child.epochs "
                      f"({values['child.epochs']}), got {values['child.reward_last_epochs']}")


def search_space(cfg):
  return make_space(cfg.search_space)


def train_config(cfg) -> child.TrainConfig:
  c = cfg.child
  return child.TrainConfig(
      epochs=c.epochs, batch_size=c.batch_size, learning_rate=float(c.learning_rate),
      momentum=float(c.momentum), nesterov=c.nesterov, weight_decay=float(c.weight_decay),
      reward_last_epochs=c.reward_last_epochs, reward_power=float(c.reward_power),
      eval_batch_size=c.eval_batch_size, fast_compile=c.fast_compile)


def reinforce_config(cfg) -> reinforce.ReinforceConfig:
  c = cfg.controller
  opt = lambda v: None if v is None else float(v)
  return reinforce.ReinforceConfig(
      learning_rate=float(c.learning_rate), baseline_decay=float(c.baseline_decay),
      entropy_weight=float(c.entropy_weight),
      controller=controller.ControllerConfig(
          hidden_size=c.hidden_size, num_lstm_layers=c.num_lstm_layers,
          init_scale=float(c.init_scale), temperature=opt(c.temperature),
          tanh_constant=opt(c.tanh_constant)))
