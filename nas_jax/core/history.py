"""What a search's workdir records, read back: history and steps rows, their schema, the space and
the metric its ``config.json`` names, and the best (unique) architectures.

The search loops (:mod:`nas_jax.core.search`, :mod:`nas_jax.core.shared_search`) write these rows;
the workdir (:mod:`nas_jax.core.workdir`) checks them on resume; the tools (compare, report) and
the retrain read them. One place, so that a row's schema and "the best unique architectures"
are written once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any, NamedTuple, Sequence

from nas_jax.spaces import SPACES, base
from nas_jax.training import shared as shared_lib


# Keys of config.json derived from the space and its evaluator; absent in older workdirs.
DERIVED_KEYS = ("search_space.class", "search_space.module", "metric.name",
                "metric.higher_is_better")


# Fields that may differ between the processes of one search (they do not change what is
# computed), and those that may also change when a run is resumed.
PER_HOST = ("data.data_dir", "child.num_devices", "shared.num_devices", "child.parallel_children",
            "search.verbose",
            "search.keep_checkpoints", "search.gather_timeout_s", "search.tensorboard")
RESUMABLE_CHANGES = PER_HOST + ("search.num_steps",)
# Fields added after workdirs were written without them, with the value those workdirs ran with.
ADDED_FIELDS = {"child.lr_schedule": "constant", "lm_child.optimizer": "sgd",
                "lm_child.weight_decay": 0.0, "lm_child.reward_above_unigram": False}
ADDED_FIELDS.update({f"shared.{k}": v
                     for k, v in dataclasses.asdict(shared_lib.SharedConfig()).items()})


def run_digest(record: dict[str, Any]) -> str:
  """A hash of what a search computes (``record``: flat config fields, per-host ones ignored)."""
  kept = {k: v for k, v in record.items() if k not in PER_HOST}
  return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def config_record(config, space: base.SearchSpace,
                  metric: base.Metric) -> dict[str, Any]:
  """What ``config.json`` holds: the flat config (its ``search_space.*`` fields those of the space
  searched), the space's class and module, and the metric that ranks its children."""
  record = dict(config.flat)
  if dataclasses.is_dataclass(space):  # the space searched, also when passed as an object
    record = {k: v for k, v in record.items() if not k.startswith("search_space.")}
    record.update({f"search_space.{k}": v for k, v in base.to_json(space).items()})
  record = json.loads(json.dumps(record))  # tuples -> lists, as on disk
  record.update({"search_space.class": type(space).__name__,
                 "search_space.module": type(space).__module__,
                 "metric.name": metric.name, "metric.higher_is_better": metric.higher_is_better})
  return record


ROW_KEYS = {"step": int, "index": int, "tokens": list, "reward": (int, float), "failed": bool}
STEP_KEYS = {"step": int}


def read_history(path: str, required: dict | None = None) -> list[dict]:
  """The rows of a JSON-lines file of a workdir (history or steps; [] if there is none).

  A last line with no newline (cut short by a kill) is dropped. Any other line that is not a JSON
  object with the ``required`` keys and types (default: a history row's, for a file named
  ``history.jsonl``) raises ValueError naming the file and the line number.
  """
  if required is None:
    required = ROW_KEYS if os.path.basename(path) == "history.jsonl" else {}
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  rows = []
  for number, line in enumerate(lines[:-1], 1):  # lines[-1] is b"" or a line cut by a kill
    try:
      row = json.loads(line)
    except ValueError:
      row = None
    if not (isinstance(row, dict) and all(
        isinstance(row.get(k), t) and not (t is int and isinstance(row.get(k), bool))
        for k, t in required.items())):
      raise ValueError(f"{path}, line {number}: not a row of this file ({line[:60]!r})")
    rows.append(row)
  return rows


def load_history(workdir: str) -> list[dict]:
  """The rows of ``workdir/history.jsonl``, in evaluation order."""
  path = os.path.join(workdir, "history.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(path)
  return read_history(path)


_BUILT_IN = {  # search_space.name -> (module, class, metric)
    "cnn": ("nas_jax.spaces.cnn", "CNNSpace", base.ACCURACY),
    "rnn_cell": ("nas_jax.spaces.rnn_cell", "RNNCellSpace", base.PERPLEXITY),
}


def legacy_config_keys(config: dict) -> dict:
  """The keys a ``config.json`` written before ``search_space.module`` and ``metric.name`` existed
  lacks, from its ``search_space.name`` "cnn" or "rnn_cell" (the built-in spaces and their
  metrics); ``{}`` for a newer config, another name, or a recorded ``search_space.class`` that is
  not the named space's (a user's space searched under a built-in config)."""
  if "search_space.module" in config or "metric.name" in config:
    return {}
  known = _BUILT_IN.get(config.get("search_space.name"))
  if known is None or config.get("search_space.class", known[1]) != known[1]:
    return {}
  module, class_name, metric = known
  return {"search_space.module": module, "search_space.class": class_name,
          "metric.name": metric.name, "metric.higher_is_better": metric.higher_is_better}


def load_metric(workdir: str) -> base.Metric:
  """The metric that ranks the children of the search in ``workdir`` (its ``config.json``; for
  older workdirs :func:`legacy_config_keys`; accuracy, the default evaluator's, if neither says)."""
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  config = {**config, **legacy_config_keys(config)}
  if "metric.name" in config:
    return base.Metric(config["metric.name"], bool(config["metric.higher_is_better"]))
  return base.ACCURACY


def ranking_rows(rows: list[dict]) -> list[dict]:
  """The rows that rank a search's architectures: a weight-sharing search's ``derive`` rows (its
  other rows are scored on one validation minibatch while the shared weights still train), else
  every row."""
  derived = [r for r in rows if r.get("evaluation") == "derive"]
  return derived or rows


def best_row(rows: list[dict]) -> dict | None:
  """The history row of the highest reward among children that did not fail."""
  ok = [r for r in rows if not r["failed"]]
  return max(ok, key=lambda r: r["reward"]) if ok else None


def arch_key(row: dict) -> str:
  """The identity of a row's architecture: its tokens (two samples of one architecture share it)."""
  return json.dumps(row["tokens"])


def unique_best(rows: Sequence[dict]) -> list[dict]:
  """One row per architecture (by ``tokens``), the one of its highest reward (the first of equal
  ones), children that failed left out; architectures in the order of their first sample."""
  best: dict[str, dict] = {}
  for r in rows:
    key = arch_key(r)
    if not r["failed"] and (key not in best or r["reward"] > best[key]["reward"]):
      best[key] = r
  return list(best.values())


def load_steps(workdir: str) -> list[dict] | None:
  """The rows of ``workdir/steps.jsonl``; None if there is none (older versions wrote none)."""
  path = os.path.join(workdir, "steps.jsonl")
  return read_history(path) if os.path.exists(path) else None


def load_run(workdir: str) -> dict[str, Any]:
  """``{"workdir", "rows", "steps", "config"}`` of a search workdir.

  ``rows`` are the history rows (``history.jsonl``, required), ``steps`` the controller steps
  (``steps.jsonl``; None if the file is absent: runs of older versions lack it), ``config`` the
  flat config (``config.json``; ``{}`` if absent).

  Raises:
    FileNotFoundError: ``workdir`` or its ``history.jsonl`` does not exist.
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"{workdir} is not a directory")
  rows = load_history(workdir)
  steps_path = os.path.join(workdir, "steps.jsonl")
  steps = read_history(steps_path) if os.path.exists(steps_path) else None
  config = {}
  config_path = os.path.join(workdir, "config.json")
  if os.path.exists(config_path):
    with open(config_path) as f:
      config = json.load(f)
  return {"workdir": workdir, "rows": rows, "steps": steps, "config": config}


class RunSpace(NamedTuple):
  """What a workdir's ``config.json`` says was searched and how its children were scored.

  Attributes:
    space: the search space, rebuilt; None if it could not be (``why`` says why).
    module: ``search_space.module``, the module of the space's class (None: not recorded).
    class_name: ``search_space.class``.
    metric: ``metric.name`` and ``metric.higher_is_better``, the children's score in the history
      rows (e.g. ``base.ACCURACY``); None: not recorded (children rank by reward).
    why: why ``space`` is None ("" when it is not).
  """
  space: base.SearchSpace | None
  module: str | None
  class_name: str | None
  metric: base.Metric | None
  why: str


def _tuples(v):
  """JSON lists -> tuples (nested too), as the space's frozen dataclass fields are."""
  return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _build_space(config: dict, spaces: Sequence[type] = ()) -> tuple[base.SearchSpace | None, str]:
  """The space of ``config`` (class by module and name among the packaged spaces and ``spaces``,
  fields from ``search_space.*``) and "", or None and why not."""
  module, class_name = config.get("search_space.module"), config.get("search_space.class")
  if not module or not class_name:
    missing = " and ".join(k for k, v in (("search_space.module", module),
                                         ("search_space.class", class_name)) if not v)
    return None, (f"config.json records no {missing} (a workdir of an older version), and its "
                  f"search_space.name {config.get('search_space.name')!r} is not a built-in space "
                  "searched with its own class")
  cls = {(c.__module__, c.__name__): c for c in (*SPACES.values(), *spaces)}.get(
      (module, class_name))
  if cls is None:  # no code is imported because a workdir names it
    return None, (f"{module}.{class_name} is not a packaged space, and nas_jax imports no code "
                  f"that a workdir names; pass the class (nas-jax report --space_module {module}, "
                  f"or run_space(config, spaces=[{class_name}]))")
  if not (isinstance(cls, type) and issubclass(cls, base.SearchSpace)):
    return None, f"{module}.{class_name} is not a nas_jax.spaces.base.SearchSpace"
  names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
  fields = {k.split(".", 1)[1]: _tuples(v) for k, v in config.items()
            if k.startswith("search_space.")}
  fields = {k: v for k, v in fields.items() if k in names or k not in ("name", "class", "module")}
  try:
    return cls(**fields), ""
  except (TypeError, ValueError) as e:
    return None, f"cannot build {class_name} from config.json's search_space fields ({e})"


def run_space(config: dict, spaces: Sequence[type] = ()) -> RunSpace:
  """The space and metric a workdir's flat ``config.json`` records (see :class:`RunSpace`).

  Reads ``search_space.module``, ``search_space.class`` (the class, found by these names among
  the packaged spaces and ``spaces``: nothing is imported because the file names it),
  the other ``search_space.*`` keys (the class's fields; JSON lists become tuples; ``name``,
  ``class`` and ``module`` are skipped unless they are fields), ``metric.name`` and
  ``metric.higher_is_better`` (both, or no metric). A config without the module and metric keys
  (an older version's) gets them from :func:`legacy_config_keys`.
  """
  config = {**config, **legacy_config_keys(config)}
  space, why = _build_space(config, spaces)
  name, higher = config.get("metric.name"), config.get("metric.higher_is_better")
  metric = base.Metric(name, bool(higher)) if name and higher is not None else None
  return RunSpace(space, config.get("search_space.module"), config.get("search_space.class"),
                  metric, why)


def metric_value(row: dict, metric: base.Metric | None) -> float | None:
  """The value of ``metric`` in a history row (a key of the row or of its ``metrics`` dict); None
  if the row has none or it is not a finite number."""
  if metric is None:
    return None
  v = row.get(metric.name)
  if v is None and isinstance(row.get("metrics"), dict):
    v = row["metrics"].get(metric.name)
  if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
    return None
  return float(v)


def top_architectures(rows: Sequence[dict], n: int = 10,
                      metric: base.Metric | None = None) -> list[dict]:
  """The ``n`` best rows among children that did not fail.

  Args:
    rows: history rows.
    n: how many.
    metric: rank by this score (:func:`metric_value`; e.g. ``run_space(config).metric``), best
      first; rows without it come after the others; ties and the rows without it go by reward.
      None: by reward alone.
  """
  ok = [r for r in rows if not r.get("failed")]
  if metric is None:
    return sorted(ok, key=lambda r: -float(r.get("reward", 0.0)))[:n]
  sign = -1.0 if metric.higher_is_better else 1.0

  def key(r):
    v = metric_value(r, metric)
    return (v is None, 0.0 if v is None else sign * v, -float(r.get("reward", 0.0)))

  return sorted(ok, key=key)[:n]
