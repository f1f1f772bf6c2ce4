"""Reading a search's history and comparing searchers (e.g. REINFORCE vs random search)."""

from __future__ import annotations

import json
import os

import numpy as np


def read_history(path: str) -> list[dict]:
  """Rows of a history file; a last line cut short by a kill (and anything after) is dropped."""
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          break
  return rows


def load_history(workdir: str) -> list[dict]:
  """The rows of ``workdir/history.jsonl``, in evaluation order."""
  path = os.path.join(workdir, "history.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(path)
  return read_history(path)


def best_row(rows: list[dict]) -> dict | None:
  """The history row of the highest reward among children that did not fail."""
  ok = [r for r in rows if not r["failed"]]
  return max(ok, key=lambda r: r["reward"]) if ok else None


def top_k_mean(rewards, k: int) -> float:
  """Mean of the k largest rewards (fewer if fewer exist)."""
  r = np.sort(np.asarray(rewards, np.float64))[::-1][:k]
  return float(r.mean()) if r.size else float("nan")


def summarize(rows: list[dict], ks=(1, 5, 15)) -> dict:
  """Budget, reward statistics of the first and last quarter, and the top-k means."""
  rewards = [r["reward"] for r in rows]
  q = max(1, len(rewards) // 4)
  out = {"architectures": len(rows), "failed": sum(r["failed"] for r in rows),
         "mean_reward_first_quarter": float(np.mean(rewards[:q])) if rewards else float("nan"),
         "mean_reward_last_quarter": float(np.mean(rewards[-q:])) if rewards else float("nan"),
         "distinct_architectures": len({json.dumps(r["arch"], sort_keys=True) for r in rows})}
  for k in ks:
    out[f"top{k}_mean_reward"] = top_k_mean(rewards, k)
  ppls = sorted(r["val_ppl"] for r in rows if not r["failed"] and r.get("val_ppl") is not None)
  if ppls:  # language-model children: the paper compares perplexities
    out["best_val_ppl"] = ppls[0]
    out["top5_mean_val_ppl"] = float(np.mean(ppls[:5]))
  best = best_row(rows)
  if best:
    if "val_ppl" not in best:
      out["best_val_accuracy"] = best["val_accuracy"]
    out["best_description"] = best["description"]
  return out
