"""Reading a search's history and comparing searchers (e.g. REINFORCE vs random search)."""

from __future__ import annotations

import json
import os

import numpy as np

from nas_jax.spaces import base


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


def best_row(rows: list[dict]) -> dict | None:
  """The history row of the highest reward among children that did not fail."""
  ok = [r for r in rows if not r["failed"]]
  return max(ok, key=lambda r: r["reward"]) if ok else None


def top_k_mean(rewards, k: int) -> float:
  """Mean of the k largest rewards (fewer if fewer exist)."""
  r = np.sort(np.asarray(rewards, np.float64))[::-1][:k]
  return float(r.mean()) if r.size else float("nan")


def summarize(rows: list[dict], ks=(1, 5, 15), metric: base.Metric = base.ACCURACY) -> dict:
  """Budget, reward statistics of the first and last quarter, the top-k means, and the best
  value of ``metric`` (for a metric to minimise such as perplexity, also its top-5 mean)."""
  rewards = [r["reward"] for r in rows]
  q = max(1, len(rewards) // 4)
  out = {"architectures": len(rows), "failed": sum(r["failed"] for r in rows),
         "mean_reward_first_quarter": float(np.mean(rewards[:q])) if rewards else float("nan"),
         "mean_reward_last_quarter": float(np.mean(rewards[-q:])) if rewards else float("nan"),
         "distinct_architectures": len({json.dumps(r["arch"], sort_keys=True) for r in rows})}
  for k in ks:
    out[f"top{k}_mean_reward"] = top_k_mean(rewards, k)
  best = best_row(rows)
  if metric.higher_is_better:
    if best and best.get(metric.name) is not None:
      out[f"best_{metric.name}"] = best[metric.name]
  else:  # the paper compares the perplexities themselves
    values = sorted(r[metric.name] for r in rows
                    if not r["failed"] and r.get(metric.name) is not None)
    if values:
      out[f"best_{metric.name}"] = values[0]
      out[f"top5_mean_{metric.name}"] = float(np.mean(values[:5]))
  if best:
    out["best_description"] = best["description"]
  return out
