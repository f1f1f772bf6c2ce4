"""The search configuration: defaults (the paper's CIFAR-10 settings), validation, conversion.

The experiment configs (``nas_jax/configs/``, re-exported by ``experiments/configs/`` for
``--config``) start from :func:`default_config` (locked, so a misspelt key fails at once) and
change fields. :func:`parse` checks every field's type and range once, raising
:class:`ConfigError` naming the field and the fix, and returns the config as frozen dataclasses
(:class:`Config`: one per section, each checking its own fields) that the library reads.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, NamedTuple

import ml_collections

from nas_jax.errors import ConfigError  # noqa: F401  (public here too)
from nas_jax.training import child, lm, optim, shared as shared_lib
from nas_jax.core import controller, reinforce, searchers, workdir as workdir_lib
from nas_jax.spaces import SPACES, make_space


USER_SPACE = ""   # config.search_space.name of a config for a space passed to run_search


def default_config(space: str = "cnn") -> ml_collections.ConfigDict:
  """Defaults for a search of the space named ``space`` (its section mirrors the space's fields).

  ``space=""`` (:data:`USER_SPACE`): a config for a space object passed to
  ``run_search(cfg, workdir, space=...)``: its ``search_space`` section is only ``name=""``, the
  data the 8x8 digits (no download).
  """
  if space != USER_SPACE and space not in SPACES:
    raise ConfigError(f"config.search_space.name: unknown space {space!r}; one of {sorted(SPACES)}")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(
      name=SPACES[space].data_names[0] if space else "digits", data_dir="", num_validation=0,
      max_train=0, level="word"))
  space_fields = {f.name: f.default for f in dataclasses.fields(SPACES[space])} if space else {}
  c.search_space = ml_collections.ConfigDict(dict(space_fields, name=space))
  c.child = ml_collections.ConfigDict(dict(executor="exact", num_devices=0, parallel_children=0,
                                           **dataclasses.asdict(child.TrainConfig())))
  c.lm_child = ml_collections.ConfigDict(dict(
      dataclasses.asdict(lm.LMConfig()), reward_constant=80.0, vmap=True,
      reward_above_unigram=False))
  r, ctrl = reinforce.ReinforceConfig(), controller.ControllerConfig()
  optional = {k: ml_collections.FieldReference(v, field_type=float)
              for k, v in dataclasses.asdict(ctrl).items() if v is None}
  c.controller = ml_collections.ConfigDict(dict(
      {**dataclasses.asdict(ctrl), **optional}, learning_rate=r.learning_rate,
      baseline_decay=r.baseline_decay, entropy_weight=r.entropy_weight,
      accumulate_steps=r.accumulate_steps))
  c.search = ml_collections.ConfigDict(dict(
      searcher="reinforce", num_steps=1600, children_per_step=8, keep_checkpoints=3,
      verbose=False, gather_timeout_s=86400.0, tensorboard=True))
  c.shared = ml_collections.ConfigDict(dataclasses.asdict(SharedConfig()))
  c.lock()
  return c


# What a workdir may differ in on resume, and the digest of what a search computes: the workdir's.
PER_HOST, RESUMABLE_CHANGES, ADDED_FIELDS = (workdir_lib.PER_HOST, workdir_lib.RESUMABLE_CHANGES,
                                             workdir_lib.ADDED_FIELDS)
run_digest = workdir_lib.run_digest


_POSITIVE_INT = ("search_space.start_layers", "search_space.increment_every",
                 "search_space.convs_per_layer", "child.epochs", "child.batch_size",
                 "child.reward_last_epochs", "child.eval_batch_size", "controller.hidden_size",
                 "controller.num_lstm_layers", "search.num_steps", "search.children_per_step",
                 "search.keep_checkpoints", "search_space.base", "search_space.nodes",
                 "lm_child.num_layers",
                 "lm_child.hidden_size", "lm_child.embed_size", "lm_child.batch_size",
                 "lm_child.bptt", "lm_child.epochs", "lm_child.eval_batch_size",
                 "lm_child.test_batch_size",
                 "controller.accumulate_steps")
_NON_NEGATIVE = ("child.num_devices", "child.parallel_children", "search_space.layers_increment",
                 "search_space.max_layers", "data.num_validation",
                 "data.max_train", "child.weight_decay", "controller.entropy_weight",
                 "lm_child.decay_after_epoch", "lm_child.max_train_tokens",
                 "lm_child.max_eval_tokens")
_UNIT_INTERVAL = ("lm_child.dropout", "lm_child.embed_dropout", "lm_child.lr_decay")
_POSITIVE = ("child.learning_rate", "child.reward_power", "controller.init_scale",
             "controller.learning_rate", "controller.temperature", "controller.tanh_constant",
             "lm_child.init_scale", "lm_child.learning_rate", "lm_child.max_grad_norm",
             "lm_child.reward_constant", "search.gather_timeout_s")
_CHOICE_LISTS = ("search_space.filter_heights", "search_space.filter_widths",
                 "search_space.num_filters", "search_space.strides", "search_space.combinations",
                 "search_space.activations")
_ENUMS = {"child.executor": ("exact", "vmap"), "child.lr_schedule": optim.CHILD_LR_SCHEDULES,
          "search.searcher": searchers.SEARCHERS, "data.level": ("word", "char"),
          "lm_child.optimizer": ("sgd",)}   # cell children train with SGD only (cell_children.py)


_MAXIMUM = {  # field -> (largest value, why)
    "search.children_per_step": (4096, "a step's children, their tokens and results are held "
                                       "in memory together"),
    "search_space.start_layers": (256, "each layer is a compiled convolution (or cell node)"),
    "search_space.max_layers": (256, "each layer is a compiled convolution (or cell node)"),
    "search_space.convs_per_layer": (16, "each predicted layer is that many convolutions"),
    "controller.hidden_size": (4096, "the controller's LSTM weights grow with its square"),
    "controller.num_lstm_layers": (16, "every controller step runs each layer"),
}


def _check_maxima(values: dict[str, Any]) -> None:
  """Upper bounds that keep a typo from filling the memory (before anything is written)."""
  for name, (most, why) in _MAXIMUM.items():
    v = values.get(name)
    if isinstance(v, int) and v > most:
      raise ConfigError(f"config.{name}: at most {most} ({why}), got {v}")


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
    elem = type(default[0]) if default else int
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(x, elem) and not isinstance(x, bool) for x in value)
  else:
    ok = isinstance(value, type(default))
  if not ok:
    kind = (f"a tuple of {type(default[0]).__name__ if default else 'int'}s"
            if isinstance(default, (list, tuple)) else type(default).__name__)
    raise ConfigError(f"config.{name}: expected {kind}, got {value!r}; set it like the default "
                      f"({default!r})")


def _check_ranges(values: dict[str, Any]) -> None:
  """The range rules of this module's tables, for the dotted fields in ``values``."""
  for name in (n for n in _POSITIVE_INT if n in values):
    if values[name] < 1:
      raise ConfigError(f"config.{name}: must be >= 1, got {values[name]}")
  for name in (n for n in _UNIT_INTERVAL if n in values):
    if not 0 <= values[name] < 1:
      raise ConfigError(f"config.{name}: must be in [0, 1), got {values[name]}")
  for name in (n for n in _NON_NEGATIVE if n in values):
    if not (values[name] >= 0 and math.isfinite(values[name])):
      raise ConfigError(f"config.{name}: must be >= 0, got {values[name]}")
  for name in (n for n in _POSITIVE if n in values):
    v = values[name]
    if v is not None and not (v > 0 and math.isfinite(v)):
      raise ConfigError(f"config.{name}: must be a finite number > 0, got {v}")
  for name in (n for n in _CHOICE_LISTS if n in values):
    v = values[name]
    if not v:
      raise ConfigError(f"config.{name}: empty choice list; give at least one value, "
                        f"e.g. {flatten(default_config())[name]}")
    if any(isinstance(x, int) and x < 1 for x in v):
      raise ConfigError(f"config.{name}: every choice must be >= 1, got {list(v)}")
  for name in (n for n in _ENUMS if n in values):
    if values[name] not in _ENUMS[name]:
      raise ConfigError(f"config.{name}: {values[name]!r} is not one of {list(_ENUMS[name])}")


def _section(prefix: str, *objs) -> dict[str, Any]:
  """``{"prefix.field": value}`` of the dataclasses ``objs`` (nested dataclass fields skipped)."""
  return {f"{prefix}.{f.name}": getattr(o, f.name) for o in objs for f in dataclasses.fields(o)
          if not dataclasses.is_dataclass(getattr(o, f.name))}


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """``config.data``: which dataset, where it is, and how it is split."""
  name: str = "cifar10"
  data_dir: str = ""
  num_validation: int = 0
  max_train: int = 0
  level: str = "word"

  def __post_init__(self):
    _check_ranges(_section("data", self))
    if self.data_dir and not os.path.isdir(self.data_dir):
      raise ConfigError(f"config.data.data_dir: {self.data_dir!r} is not a directory; give the "
                        "folder that holds the data, or '' for the default")


@dataclasses.dataclass(frozen=True)
class ChildConfig:
  """``config.child``: the executor, its devices, and the child-training recipe.

  ``parallel_children``: the ``exact`` executor's children training at once on one device (0:
  one per core on a CPU, 1 on an accelerator): one child compiles while another trains. A child's
  result does not depend on it.
  """
  executor: str = "exact"
  num_devices: int = 0
  parallel_children: int = 0
  train: child.TrainConfig = child.TrainConfig()

  def __post_init__(self):
    _check_ranges(_section("child", self, self.train))
    if not 0 <= self.train.momentum < 1:
      raise ConfigError(f"config.child.momentum: must be in [0, 1), got {self.train.momentum}")
    if self.train.reward_last_epochs > self.train.epochs:
      raise ConfigError("config.child.reward_last_epochs: must be <= config.child.epochs "
                        f"({self.train.epochs}), got {self.train.reward_last_epochs}")


@dataclasses.dataclass(frozen=True)
class LMChildConfig:
  """``config.lm_child``: the language model of a cell child, and its reward c / ppl^2.

  ``reward_above_unigram``: reward c * max(0, 1/ppl^2 - 1/ppl_u^2) instead, ppl_u the validation
  perplexity of the unigram model of the child's training tokens: a cell whose LM does no better
  than predicting character frequencies (e.g. one that zeroes its state) gets 0, as a diverged one.
  """
  lm: lm.LMConfig = lm.LMConfig()
  reward_constant: float = 80.0
  vmap: bool = True
  reward_above_unigram: bool = False

  def __post_init__(self):
    _check_ranges(_section("lm_child", self, self.lm))


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """``config.search``: the searcher and the budget of the loop."""
  searcher: str = "reinforce"
  num_steps: int = 1600
  children_per_step: int = 8
  keep_checkpoints: int = 3
  verbose: bool = False
  gather_timeout_s: float = 86400.0
  tensorboard: bool = True

  def __post_init__(self):
    _check_ranges(_section("search", self))


SharedConfig = shared_lib.SharedConfig


_POSITIVE_INT += ("shared.epochs", "shared.children_per_batch", "shared.derive_samples",
                  "shared.derive_top_k", "shared.batch_size", "shared.eval_batch_size",
                  "shared.lr_t0", "shared.lr_t_mul")
_NON_NEGATIVE += ("shared.train_steps", "shared.controller_steps", "shared.lr_min",
                  "shared.weight_decay", "shared.grad_clip", "shared.num_devices")
_POSITIVE += ("shared.reward_power", "shared.learning_rate")
_ENUMS["shared.lr_schedule"] = shared_lib.LR_SCHEDULES


@dataclasses.dataclass(frozen=True)
class Config:
  """A whole search's config, parsed once from the ``ConfigDict`` (:func:`parse`).

  ``flat`` keeps the ``ConfigDict``'s fields by dotted name, as ``config.json`` records them.
  """
  seed: int
  data: DataConfig
  search_space: Any  # a nas_jax.spaces.base.SearchSpace
  child: ChildConfig
  lm_child: LMChildConfig
  controller: reinforce.ReinforceConfig
  search: SearchConfig
  shared: SharedConfig = SharedConfig()
  flat: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

  def __post_init__(self):
    _check_ranges(_section("shared", self.shared))
    _check_ranges(_section("controller", self.controller, self.controller.controller))
    if not 0 <= self.controller.baseline_decay < 1:
      raise ConfigError("config.controller.baseline_decay: must be in [0, 1), got "
                        f"{self.controller.baseline_decay}")
    allowed = self.search_space.data_names
    if allowed and self.data.name not in allowed:
      raise ConfigError(f"config.data.name: {self.data.name!r} is not one of {list(allowed)} "
                        f"(the data of search space {self.search_space.name!r})")
    self.search_space.check_config(self)
    if self.shared.enabled:
      shared_lib.check_space(self.search_space, self)


def parse(cfg: ml_collections.ConfigDict, space=None) -> Config:
  """Checks ``cfg`` and returns it as a :class:`Config` (frozen dataclasses, checked once).

  Args:
    cfg: the config.
    space: the space object searched (``run_search(..., space=...)``), if any: it becomes
      ``Config.search_space`` and is checked against the config (``SearchSpace.check_config``).
      A config whose ``search_space.name`` is ``""`` (``nas_jax.configs.custom``) needs one; one
      naming a built-in space still has that section checked.

  Raises:
    ConfigError: for unknown or missing keys, wrong types and out-of-range values, naming the
      field and the fix; for a config without a space and no ``space``.
  """
  space_name = cfg.get("search_space", {}).get("name", "cnn")
  defaults = flatten(default_config(space_name))
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
  if not 0 <= values["seed"] < 2**63:
    raise ConfigError(f"config.seed: must be in [0, 2**63), got {values['seed']}")
  _check_maxima(values)
  _check_ranges({k: v for k, v in values.items() if k.startswith("search_space.")})
  if space_name == USER_SPACE and space is None:
    raise ConfigError("config.search_space.name: this config has no search space; pass yours "
                      "(run_search(cfg, workdir, space=MySpace())) or set search_space.name to "
                      f"one of {sorted(SPACES)} with its fields (e.g. --config cnn_digits)")
  if space_name != USER_SPACE:
    try:
      built = make_space(cfg.search_space)
    except (ValueError, TypeError) as e:
      raise ConfigError(f"config.{e}" if str(e).startswith("search_space.") else str(e)) from None
    space = space or built
  c = cfg.child
  ctrl = _fields(cfg.controller, controller.ControllerConfig)
  lm_fields = {k: v for k, v in cfg.lm_child.items()
               if k not in ("reward_constant", "vmap", "reward_above_unigram")}
  return Config(
      seed=cfg.seed, data=DataConfig(**cfg.data), search_space=space,
      child=ChildConfig(c.executor, c.num_devices, c.parallel_children,
                        _fields(c, child.TrainConfig)),
      lm_child=LMChildConfig(lm.LMConfig(**lm_fields), float(cfg.lm_child.reward_constant),
                             cfg.lm_child.vmap, bool(cfg.lm_child.reward_above_unigram)),
      controller=_fields(cfg.controller, reinforce.ReinforceConfig, controller=ctrl),
      search=SearchConfig(**{**cfg.search, "gather_timeout_s": float(cfg.search.gather_timeout_s)}),
      shared=_fields(cfg.shared, SharedConfig), flat=values)


def validate(cfg: ml_collections.ConfigDict, space=None) -> None:
  """Raises ConfigError for unknown keys, wrong types and out-of-range values (:func:`parse`)."""
  parse(cfg, space)


def _fields(section, cls, **extra):
  """Builds dataclass ``cls`` from the config section's fields of the same names."""
  names = {f.name: f for f in dataclasses.fields(cls)}
  vals = {k: section[k] for k in names if k in section and k not in extra}
  vals = {k: float(v) if isinstance(names[k].default, float) and v is not None else v
          for k, v in vals.items()}
  return cls(**vals, **extra)


# ----------------------------------------------------------------------------------------------
# The final training's config (``nas_jax.core.retrain``): a search's data and space, a longer
# schedule, no reward.

_UNUSED_CHILD_FIELDS = ("reward_last_epochs", "reward_power")  # no reward in a final training


class Final(NamedTuple):
  """A final config, checked (:func:`parse_final`)."""
  seed: int
  split_seed: int               # -1: the search's seed (0 without a search)
  data: DataConfig
  space: Any                    # the config's space (used with an architecture given by hand)
  train: child.TrainConfig
  keep_checkpoints: int
  tensorboard: bool
  record: dict                  # the final config as given (config.json of the output folder)


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
                                       dataclasses.asdict(child.TrainConfig()).items()
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
  known = set(default_final_config(default_config()).keys())
  unknown = sorted(set(cfg.keys()) - known)
  if unknown:
    raise ConfigError(f"config.{unknown[0]}: unknown key of a final config; use one "
                                 f"of {', '.join(sorted(known))}")
  full = default_config(cfg.search_space.get("name", "cnn"))
  for section in ("data", "search_space", "child"):
    for k, v in cfg[section].items():
      if k not in full[section]:
        raise ConfigError(f"config.{section}.{k}: unknown key; use one of "
                                     f"{', '.join(sorted(full[section]))}")
      try:
        full[section][k] = v
      except TypeError:
        raise ConfigError(f"config.{section}.{k}: expected the type of "
                                     f"{full[section][k]!r}, got {v!r}") from None
  full.seed = cfg.seed
  full.child.reward_last_epochs = 1  # unused here; keeps parse's check of it against epochs
  if cfg.child.lr_schedule not in optim.CHILD_LR_SCHEDULES:
    raise ConfigError(f"config.child.lr_schedule: {cfg.child.lr_schedule!r} is not "
                                 f"one of {list(optim.CHILD_LR_SCHEDULES)}")
  for name in ("split_seed", "keep_checkpoints"):
    if not isinstance(cfg[name], int) or isinstance(cfg[name], bool):
      raise ConfigError(f"config.{name}: expected int, got {cfg[name]!r}")
  if cfg.split_seed < -1:
    raise ConfigError(f"config.split_seed: must be >= 0, or -1 for the search's seed; "
                                 f"got {cfg.split_seed}")
  if cfg.keep_checkpoints < 1:
    raise ConfigError(f"config.keep_checkpoints: must be >= 1, got "
                                 f"{cfg.keep_checkpoints}")
  parsed = parse(full)
  return Final(cfg.seed, cfg.split_seed, parsed.data, parsed.search_space, parsed.child.train,
               cfg.keep_checkpoints, bool(cfg.tensorboard), cfg.to_dict())
