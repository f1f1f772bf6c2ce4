"""The comparison's tables in markdown (``nas-jax compare``): one row per searcher, means with
95% t-intervals over its seeds (:func:`nas_jax.tools.analysis.compare_groups`), and how each
search moved over its budget (:func:`dynamics`).
"""

from __future__ import annotations

import math

import numpy as np

from nas_jax.tools import analysis
from nas_jax.tools.analysis import INTERVAL, Groups


def _duration(seconds: float) -> str:
  seconds = round(seconds)
  if seconds < 60:
    return f"{seconds} s"
  if seconds < 3600:
    return f"{seconds // 60} min {seconds % 60} s"
  return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _cell(key: str, stat: dict) -> str:
  """``mean ± half-width`` of one group's value (``mean`` alone for one run)."""
  if not stat["n"] or not math.isfinite(stat["mean"]):
    return "–"
  m = stat["mean"]
  half = None if stat["lo"] is None else (stat["hi"] - stat["lo"]) / 2
  if key == "wall_seconds":
    fmt = _duration
  elif key == "failed_share":
    fmt = lambda v: f"{100 * v:.1f}%"
  elif key == "unique_architectures":
    fmt = lambda v: f"{v:.0f}" if half is None and float(v).is_integer() else f"{v:.1f}"
  else:
    fmt = lambda v: f"{v:.4f}"
  return fmt(m) + ("" if half is None or not math.isfinite(half) else f" ± {fmt(half)}")


def comparison_markdown(result: dict) -> str:
  """The markdown table of :func:`compare_groups` (one row per group) and the lines under it."""
  budget, metric = result["budget"], result["metric"]
  q = max(1, budget // 4)
  labels = {"top1_mean_reward": "top-1", "mean_reward_first_quarter": f"mean reward, first {q}",
            "mean_reward_last_quarter": f"mean reward, last {q}", "failed_share": "failed",
            "wall_seconds": "wall time", "unique_architectures": "unique architectures",
            f"best_{metric['name']}": f"best {metric['name'].replace('_', ' ')}",
            f"top5_mean_{metric['name']}": f"top-5 mean {metric['name'].replace('_', ' ')}"}
  labels.update({f"top{k}_mean_reward": f"top-{k} mean" for k in result["ks"] if k != 1})
  keys = list(next(iter(result["groups"].values()))["stats"])
  lines = ["| searcher | seeds | " + " | ".join(labels.get(k, k) for k in keys) + " |",
           "|---" * (len(keys) + 2) + "|"]
  for name, g in result["groups"].items():
    n = len(g["runs"])
    seeds = f"{n}" if n > 1 else "1 (one run)"
    lines.append(f"| {name} | {seeds} | " + " | ".join(_cell(k, g["stats"][k]) for k in keys)
                 + " |")
  sources = {r["wall_seconds_from"] for g in result["groups"].values() for r in g["runs"]}
  wall = ("the sum of the steps' seconds in steps.jsonl" if sources == {"steps.jsonl"} else
          "the steps' seconds in steps.jsonl, or the children's training seconds where a workdir "
          "has no steps.jsonl")
  ks = "/".join(str(k) for k in result["ks"])
  value = result.get("value", analysis.VALUE_FAIR)
  lines += ["", f"{budget} architectures per run. top-{ks}: mean value of the k best unique "
            f"architectures (deduplicated by tokens, as the paper's Fig. 6 counts models; {value}). "
            "± is the half-width of the "
            f"{INTERVAL}; a group of one seed is one run, with no interval. Failed: share of the "
            f"children that failed or diverged. Wall time: {wall}."]
  shared = [name for name, g in result["groups"].items()
            if any(r.get("ranked_by") == "derive" for r in g["runs"])]
  if shared:
    lines.append(f"Weight-sharing searches ({', '.join(shared)}): top-k and best from their derive "
                 "rows (each architecture scored on the whole validation set under the trained "
                 "shared weights); counts, quarter means and failures from every row.")
  for name, g in result["groups"].items():
    if g.get("notes"):
      lines.append(f"Note: group {name}: " + "; ".join(g["notes"]) + ".")
  for name, g in result["groups"].items():
    best = max((r for r in g["runs"] if r.get("best_description")),
               key=lambda r: r["best_reward"], default=None)
    if best:
      lines.append(f"best in {name}: {best['best_description']} (reward "
                   f"{best['best_reward']:.4f}, {best['workdir']})")
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# How a search moved: is the controller learning, collapsing, or stuck at uniform?


def dynamics(rows: list[dict], steps: list[dict] | None, parts: int = 4) -> list[dict]:
  """What a searcher sampled, part by part of its budget (``parts`` equal slices, in order).

  Per slice: ``mean_reward`` (failed children's 0 included), ``failed_share``, ``unique_share``
  (distinct token vectors / children), ``repeat_share`` (children whose tokens were sampled in an
  earlier slice or earlier in this one), ``mode_share`` (per token position, the share of the
  slice's children that took the position's most frequent value, averaged over positions: the
  chance level of a uniform searcher is near 1 / options; 1.0 is a collapse onto one
  architecture), and, where ``steps.jsonl`` has them, the controller's mean sampling
  ``entropy`` over the slice's steps (nats per architecture).
  """
  out, seen = [], set()
  n = len(rows)
  for i in range(parts):
    part = rows[i * n // parts:(i + 1) * n // parts]
    if not part:
      continue
    keys = [tuple(r["tokens"]) for r in part]
    repeats = 0
    for k in keys:
      repeats += k in seen
      seen.add(k)
    width = min(len(k) for k in keys)
    modes = [max(np.unique([k[t] for k in keys], return_counts=True)[1]) / len(keys)
             for t in range(width)]
    step_ids = {r["step"] for r in part}
    ents = [s["entropy"] for s in steps or () if s.get("step") in step_ids
            and s.get("entropy") is not None]
    out.append({"first": i * n // parts, "last": i * n // parts + len(part) - 1,
                "mean_reward": float(np.mean([r["reward"] for r in part])),
                "failed_share": float(np.mean([r["failed"] for r in part])),
                "unique_share": len(set(keys)) / len(keys),
                "repeat_share": repeats / len(keys),
                "mode_share": float(np.mean(modes)) if modes else float("nan"),
                "entropy": float(np.mean(ents)) if ents else None})
  return out


def dynamics_markdown(loaded: Groups, parts: int = 4) -> str:
  """One table per group: :func:`dynamics` of each slice, mean over the group's seeds."""
  lines = []
  for name, group in loaded.runs.items():
    per_run = [dynamics(r["rows"], r["steps"], parts) for r in group]
    lines += [f"**{name}** ({len(group)} run{'s' if len(group) > 1 else ''}; mean over runs)", "",
              "| architectures | mean reward | failed | unique | repeated | mode share | "
              "entropy |", "|---|---|---|---|---|---|---|"]
    for i, part in enumerate(per_run[0]):
      cols = [d[i] for d in per_run if i < len(d)]
      mean = lambda k: float(np.mean([c[k] for c in cols]))  # noqa: E731
      ents = [c["entropy"] for c in cols if c["entropy"] is not None]
      lines.append(f"| {part['first']}-{part['last']} | {mean('mean_reward'):.4f} | "
                   f"{100 * mean('failed_share'):.1f}% | {100 * mean('unique_share'):.0f}% | "
                   f"{100 * mean('repeat_share'):.0f}% | {mean('mode_share'):.3f} | "
                   + (f"{np.mean(ents):.2f}" if ents else "–") + " |")
    lines.append("")
  lines.append("mode share: per token position, the share of children that took the position's "
               "most frequent value (averaged over positions; 1.0 = one architecture). entropy: "
               "the controller's sampling entropy per architecture (nats; steps.jsonl).")
  return "\n".join(lines)
