"""The search configuration: defaults (the paper's CIFAR-10 settings), validation, conversion.

The experiment configs (``nas_jax/configs/``, re-exported by ``experiments/configs/`` for
``--config``) start from :func:`default_config` (locked, so a misspelt key fails at once) and
change fields. :func:`parse` checks every field's type and range once, raising
:class:`ConfigError` naming the field and the fix, and returns the config as frozen dataclasses
(:class:`Config`: one per section, each checking its own fields) that the library reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any

import ml_collections

from nas_jax.training import child, lm, trainer
from nas_jax.core import controller, reinforce
from nas_jax.spaces import SPACES, make_space


class ConfigError(ValueError):
  """A bad config value; the message names the field and how to fix it."""


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


# Fields that may differ between the processes of one search (they do not change what is
# computed), and those that may also change when a run is resumed.
PER_HOST = ("data.data_dir", "child.num_devices", "child.parallel_children", "search.verbose",
            "search.keep_checkpoints", "search.gather_timeout_s", "search.tensorboard")
RESUMABLE_CHANGES = PER_HOST + ("search.num_steps",)
# Fields added after workdirs were written without them, with the value those workdirs ran with.
ADDED_FIELDS = {"child.lr_schedule": "constant", "lm_child.optimizer": "sgd",
                "lm_child.weight_decay": 0.0, "lm_child.reward_above_unigram": False}
# + every shared.* field (below SharedConfig)


def run_digest(record: dict[str, Any]) -> str:
  """A hash of what a search computes (``record``: flat config fields, per-host ones ignored)."""
  kept = {k: v for k, v in record.items() if k not in PER_HOST}
  return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


_POSITIVE_INT = ("search_space.start_layers", "search_space.increment_every",
                 "search_space.convs_per_layer", "child.epochs", "child.batch_size",
                 "child.reward_last_epochs", "child.eval_batch_size", "controller.hidden_size",
                 "controller.num_lstm_layers", "search.num_steps", "search.children_per_step",
                 "search.keep_checkpoints", "search_space.base", "lm_child.num_layers",
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
_ENUMS = {"child.executor": ("exact", "vmap"), "child.lr_schedule": trainer.LR_SCHEDULES,
          "search.searcher": ("reinforce", "random"), "data.level": ("word", "char"),
          "lm_child.optimizer": ("sgd",)}   # cell children train with SGD only (cell_children.py)


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


SHARED_LR_SCHEDULES = ("constant", "cosine", "sgdr")


@dataclasses.dataclass(frozen=True)
class SharedConfig:
  """``config.shared``: the weight-sharing (ENAS, Pham et al. 2018) search and its schedule.

  With ``enabled`` the search trains one max-size network whose weights every child shares
  (``nas_jax.core.shared_search``) instead of training each child from scratch. Each of
  ``epochs`` phases: (a) ``train_steps`` minibatches (0: one pass over the training set) of
  ``batch_size`` images train the shared weights, each on ``children_per_batch`` freshly sampled
  architectures (their gradients averaged); (b) ``controller_steps`` searcher updates, each on
  ``search.children_per_step`` architectures scored on one validation minibatch of
  ``eval_batch_size`` (reward = accuracy ** ``reward_power``). Then (c) derive:
  ``derive_samples`` architectures scored on the whole validation set; the best and the
  ``derive_top_k`` best (unique) go into ``summary.json``. The shared weights train with SGD
  (Nesterov ``momentum``, ``weight_decay``, gradient norm clipped at ``grad_clip``, 0 = off) at
  ``learning_rate`` under ``lr_schedule``: constant, cosine (to ``lr_min`` over all the
  training steps) or sgdr (cosine restarts, first period ``lr_t0`` epochs, each next one
  ``lr_t_mul`` times longer: ENAS's). ``search.num_steps`` is not used.

  The recurrent-cell space (``nas_jax.training.shared_rnn``): one language model of
  ``lm_child``'s shape (layers, sizes, dropout, ``bptt``) holds every cell's weights; a minibatch
  is one ``lm_child.bptt`` window of ``batch_size`` streams of the training text (its first
  ``lm_child.max_train_tokens``, 0 = all; 0 ``train_steps``: one pass), the state carried; a
  validation minibatch one window of ``eval_batch_size`` streams of the validation slice
  (``lm_child.max_eval_tokens``), which the derive scores whole. The reward is
  ``lm_child.reward_constant`` / ppl^2 (``reward_power`` stays 1); ``lm_child``'s training
  recipe (epochs, learning rate, batch size) is the retrain's, not used here.
  """
  enabled: bool = False
  epochs: int = 10
  train_steps: int = 0
  children_per_batch: int = 1
  controller_steps: int = 10
  derive_samples: int = 16
  derive_top_k: int = 5
  batch_size: int = 128
  eval_batch_size: int = 128
  reward_power: float = 1.0
  learning_rate: float = 0.05
  lr_min: float = 0.0
  lr_schedule: str = "cosine"
  lr_t0: int = 10
  lr_t_mul: int = 2
  momentum: float = 0.9
  nesterov: bool = True
  weight_decay: float = 1e-4
  grad_clip: float = 0.0
  fast_compile: bool = False

  def __post_init__(self):
    _check_ranges(_section("shared", self))
    if not 0 <= self.momentum < 1:
      raise ConfigError(f"config.shared.momentum: must be in [0, 1), got {self.momentum}")
    if self.derive_top_k > self.derive_samples:
      raise ConfigError(f"config.shared.derive_top_k: must be <= shared.derive_samples "
                        f"({self.derive_samples}), got {self.derive_top_k}")
    if self.lr_min > self.learning_rate:
      raise ConfigError(f"config.shared.lr_min: must be <= shared.learning_rate "
                        f"({self.learning_rate}), got {self.lr_min}")


ADDED_FIELDS.update({f"shared.{k}": v for k, v in dataclasses.asdict(SharedConfig()).items()})
_POSITIVE_INT += ("shared.epochs", "shared.children_per_batch", "shared.derive_samples",
                  "shared.derive_top_k", "shared.batch_size", "shared.eval_batch_size",
                  "shared.lr_t0", "shared.lr_t_mul")
_NON_NEGATIVE += ("shared.train_steps", "shared.controller_steps", "shared.lr_min",
                  "shared.weight_decay", "shared.grad_clip")
_POSITIVE += ("shared.reward_power", "shared.learning_rate")
_ENUMS["shared.lr_schedule"] = SHARED_LR_SCHEDULES


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
      _check_shared_space(self.search_space, self)


def _check_shared_space(space, config: Config | None = None) -> None:
  """The space a weight-sharing search can run: the CNN space at one depth, odd filters, no
  strides (one max-size network holds every child), or the recurrent-cell space (one language
  model holds every cell's leaf projections); ``config``, if given, is checked against it."""
  from nas_jax.spaces.cnn import CNNSpace  # pylint: disable=import-outside-toplevel
  from nas_jax.spaces.rnn_cell import RNNCellSpace  # pylint: disable=import-outside-toplevel
  if isinstance(space, RNNCellSpace):
    if config is not None:
      _check_shared_cells(config)
    return
  if not isinstance(space, CNNSpace):
    raise ConfigError(f"config.shared.enabled: weight sharing is implemented for the CNN space "
                      f"and the recurrent-cell space, not {type(space).__name__}; set "
                      "shared.enabled=False")
  if space.layers_increment and (not space.max_layers or space.max_layers > space.start_layers):
    raise ConfigError("config.search_space.layers_increment: a weight-sharing search has one "
                      "depth (one shared network); set it to 0 (depth = start_layers)")
  if space.predict_strides:
    raise ConfigError("config.search_space.predict_strides: the shared network has one shape; "
                      "set it to False")
  for name in ("filter_heights", "filter_widths"):
    even = [k for k in getattr(space, name) if k % 2 == 0]
    if even:
      raise ConfigError(f"config.search_space.{name}: the shared network centres each filter in "
                        f"the largest one and needs odd sizes, got {even}")


def _check_shared_cells(config: Config) -> None:
  """What the shared language model of ``nas_jax.training.shared_rnn`` cannot do."""
  sh, lm_cfg = config.shared, config.lm_child.lm
  if sh.reward_power != 1.0:
    raise ConfigError(f"config.shared.reward_power: a cell's reward is lm_child.reward_constant "
                      f"/ ppl^2 (the exact cell search's); leave reward_power at 1, got "
                      f"{sh.reward_power}")
  if lm_cfg.tie_embeddings and lm_cfg.embed_size != lm_cfg.hidden_size:
    raise ConfigError(f"config.lm_child.tie_embeddings: the tied softmax needs embed_size == "
                      f"hidden_size, got {lm_cfg.embed_size} and {lm_cfg.hidden_size}")


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
