"""Reading a search's history and comparing searchers (e.g. REINFORCE vs random search).

* :func:`load_history`, :func:`summarize`: one search; its top-k means count unique architectures
  (:func:`unique_rewards`: by ``tokens``, failed children left out), as the paper's Fig. 6 counts
  models, and :func:`unique_topk_curve` is Fig. 6's curve of one run;
* :func:`load_groups`, :func:`compare_groups`, :func:`comparison_markdown`: several searchers, each
  over several seeds, as means with 95% t-intervals (``experiments/compare.py``).
"""

from __future__ import annotations

import json
import math
import os
from typing import NamedTuple, Sequence

import numpy as np

from nas_jax.errors import CompareError  # noqa: F401  (public here too)
from nas_jax.core.history import (  # noqa: F401  (public here too)
    ROW_KEYS, STEP_KEYS, arch_key, best_row, legacy_config_keys, load_history, load_metric,
    load_steps, ranking_rows, read_history, unique_best)
from nas_jax.spaces import base


def unique_rewards(rows: list[dict]) -> dict[str, float]:
  """Each architecture's reward, keyed by :func:`arch_key`, over the children that did not fail.

  An architecture sampled more than once counts once, with its best reward (its children are
  retrained at each sample, so the rewards of one architecture differ by training noise).
  """
  return {arch_key(r): float(r["reward"]) for r in unique_best(rows)}


def top_k_mean(rewards, k: int) -> float:
  """Mean of the k largest of ``rewards`` (fewer if fewer exist; NaN if none), duplicates and all.

  For the paper's top-k of a search (Fig. 6, unique models) use :func:`unique_top_k_mean`.
  """
  r = np.sort(np.asarray(rewards, np.float64))[::-1][:k]
  return float(r.mean()) if r.size else float("nan")


def unique_top_k_mean(rows: list[dict], k: int) -> float:
  """Mean reward of the k best unique architectures (:func:`unique_rewards`: deduplicated by
  tokens, failed children left out); fewer if fewer exist, NaN if none."""
  return top_k_mean(list(unique_rewards(rows).values()), k)


def unique_topk_curve(rows: list[dict], k: int) -> np.ndarray:
  """For n = 1..len(rows): :func:`unique_top_k_mean` of the first n rows (the paper's Fig. 6).

  n counts every architecture sampled, duplicates and failed children included; the mean is over
  the best ``min(k, u_n)`` of the u_n unique architectures that did not fail among them (NaN while
  u_n = 0). O(len(rows) * k).
  """
  if int(k) < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  k = int(k)
  best: dict[str, float] = {}
  top: dict[str, float] = {}  # the k best architectures so far; an architecture's value only rises
  out = np.full(len(rows), np.nan)
  for n, r in enumerate(rows):
    if not r["failed"]:
      key, v = arch_key(r), float(r["reward"])
      if key not in best or v > best[key]:
        best[key] = v
        if key in top or len(top) < k:
          top[key] = v
        else:
          worst = min(top, key=top.get)
          if v > top[worst]:
            del top[worst]
            top[key] = v
    if top:
      out[n] = math.fsum(top.values()) / len(top)
  return out


def unique_count_curve(rows: list[dict]) -> np.ndarray:
  """For n = 1..len(rows): how many unique architectures that did not fail the first n hold."""
  seen: set[str] = set()
  out = np.zeros(len(rows), np.int64)
  for n, r in enumerate(rows):
    if not r["failed"]:
      seen.add(arch_key(r))
    out[n] = len(seen)
  return out


def wall_seconds(rows: list[dict], steps: list[dict] | None) -> tuple[float, str]:
  """The search's wall time and where it comes from.

  The sum of ``seconds`` of the rows of ``steps.jsonl`` (controller, children and checkpoint of
  each step) up to the step of the last row of ``rows`` (``"steps.jsonl"``); without them, the
  sum of the children's training ``seconds`` (``"children"``: the controller's time is missing).
  """
  last = max((r["step"] for r in rows), default=-1)
  timed = [s for s in steps or () if s.get("step", 0) <= last and s.get("seconds") is not None]
  if timed:
    return float(math.fsum(s["seconds"] for s in timed)), "steps.jsonl"
  return float(math.fsum(r.get("seconds") or 0.0 for r in rows)), "children"


def summarize(rows: list[dict], ks=(1, 5, 15), metric: base.Metric = base.ACCURACY) -> dict:
  """Budget, failures, reward statistics of the first and last quarter, the top-k means of unique
  architectures, and the best value of ``metric`` (for a metric to minimise such as perplexity,
  also its top-5 mean over unique architectures).

  ``top{k}_mean_reward`` is :func:`unique_top_k_mean` (as the paper's Fig. 6 counts models: an
  architecture sampled twice counts once, with its best reward; failed children left out);
  ``unique_architectures`` counts distinct ``tokens``. The quarter means are over every row
  (a failed child's reward, 0, included: that is what the searcher got).

  The top-k, the best and ``best_description`` come from :func:`ranking_rows`: for a
  weight-sharing search its derive rows (``ranked_by``: ``"derive"``), each scored on the whole
  validation set, not its controller-step rows scored on one minibatch; the counts and quarter
  means from every row.
  """
  rewards = [r["reward"] for r in rows]
  ranked = ranking_rows(rows)
  q = max(1, len(rewards) // 4)
  failed = sum(r["failed"] for r in rows)
  out = {"architectures": len(rows), "failed": failed,
         "failed_share": failed / len(rows) if rows else float("nan"),
         "mean_reward_first_quarter": float(np.mean(rewards[:q])) if rewards else float("nan"),
         "mean_reward_last_quarter": float(np.mean(rewards[-q:])) if rewards else float("nan"),
         "unique_architectures": len({arch_key(r) for r in rows})}
  if ranked is not rows:
    out["ranked_by"] = "derive"
  unique = sorted(unique_rewards(ranked).values(), reverse=True)
  for k in ks:
    out[f"top{k}_mean_reward"] = top_k_mean(unique, k)
  best = best_row(ranked)
  if metric.higher_is_better:
    if best and best.get(metric.name) is not None:
      out[f"best_{metric.name}"] = best[metric.name]
  else:  # the paper compares the perplexities themselves
    per_arch: dict[str, float] = {}
    for r in ranked:
      if not r["failed"] and r.get(metric.name) is not None:
        key = arch_key(r)
        per_arch[key] = min(per_arch.get(key, math.inf), r[metric.name])
    values = sorted(per_arch.values())
    if values:
      out[f"best_{metric.name}"] = values[0]
      out[f"top5_mean_{metric.name}"] = float(np.mean(values[:5]))
  if best:
    out["best_description"] = best["description"]
  return out


# ----------------------------------------------------------------------------------------------
# Several seeds per searcher


INTERVAL = ("95% t-interval over seeds (mean ± t(0.975, n−1)·s/√n, s the sample standard "
            "deviation)")
"""What the comparison's intervals are."""


def t_band(values_SxN, confidence: float = 0.95):
  """Mean over axis 0 (S seeds) and the two-sided Student-t interval of the mean.

  ``mean ± t_{(1+confidence)/2, S-1} * s / sqrt(S)`` with ``s`` the sample standard deviation
  (ddof 1). With S = 1 the bounds are NaN (one run has no interval).

  Returns:
    ``(mean_N, lo_N, hi_N)`` arrays (scalars for a 1-D input).
  """
  from scipy import stats  # pylint: disable=import-outside-toplevel  # scipy comes with sklearn
  v = np.asarray(values_SxN, np.float64)
  s = v.shape[0]
  mean = v.mean(axis=0)
  if s < 2:
    nan = np.full_like(mean, np.nan)
    return mean, nan, nan.copy()
  half = stats.t.ppf((1 + confidence) / 2, s - 1) * v.std(axis=0, ddof=1) / math.sqrt(s)
  return mean, mean - half, mean + half


def t_interval(values, confidence: float = 0.95) -> dict:
  """``{"mean", "lo", "hi", "n", "values"}`` of :func:`t_band` over the values (one per seed);
  ``lo`` and ``hi`` are None for one value (one run: no interval)."""
  values = [float(v) for v in values]
  if not values:
    return {"mean": float("nan"), "lo": None, "hi": None, "n": 0, "values": []}
  mean, lo, hi = (float(x) for x in t_band(values, confidence))
  one = len(values) < 2
  return {"mean": mean, "lo": None if one else lo, "hi": None if one else hi, "n": len(values),
          "values": values}


def _config(workdir: str) -> dict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def group_stat_keys(metric: base.Metric, ks=(1, 5, 15)) -> list[str]:
  """The keys :func:`compare_groups` aggregates over seeds, in table order."""
  keys = [f"top{k}_mean_reward" for k in ks]
  keys += ["mean_reward_first_quarter", "mean_reward_last_quarter", "failed_share",
           "wall_seconds", "unique_architectures", f"best_{metric.name}"]
  if not metric.higher_is_better:
    keys.append(f"top5_mean_{metric.name}")
  return keys


class Groups(NamedTuple):
  """Workdirs loaded for :func:`compare_groups` (:func:`load_groups`).

  Attributes:
    metric: the children's metric, the same in every workdir.
    budget: the number of architectures compared per workdir (each run's first ``budget``).
    runs: group name -> one ``{"workdir", "rows" (the first ``budget``), "steps", "config"}`` per
      workdir.
  """
  metric: base.Metric
  budget: int
  runs: dict[str, list[dict]]


def load_groups(groups: dict[str, Sequence[str]], budget: int | None = None,
                reward_constant: float | None = None) -> Groups:
  """Reads the workdirs of each group (a searcher's seeds) and checks that they compare.

  Args:
    groups: name (e.g. the searcher) -> its workdirs, one per seed.
    budget: compare the first ``budget`` architectures of each workdir (each must have that many);
      None: every workdir must have the same number.
    reward_constant: for perplexity children, score every row again as ``reward_constant`` /
      ppl^2 from its perplexity (failed rows keep 0), so that searches run with different rewards
      (e.g. ``lm_child.reward_above_unigram``) compare on one scale; None keeps the rows' rewards.

  Raises:
    CompareError: a group without workdirs, a workdir without history, metrics that differ
      (``metric.name`` in ``config.json``, :func:`load_metric`), budgets that differ. The message
      names the groups and workdirs.
  """
  if not groups:
    raise CompareError("no groups given")
  runs: dict[str, list[dict]] = {}
  for name, workdirs in groups.items():
    if not workdirs:
      raise CompareError(f"group {name!r} has no workdirs")
    runs[name] = []
    for w in workdirs:
      if not os.path.isfile(os.path.join(w, "history.jsonl")):
        raise CompareError(f"group {name!r}: no history.jsonl in {w}; run experiments/search.py "
                           "there first")
      config = _config(w)
      metric = load_metric(w) if config else base.ACCURACY
      runs[name].append({"workdir": w, "rows": load_history(w), "steps": load_steps(w),
                         "config": config, "metric": metric})
  every = [(name, r) for name, rs in runs.items() for r in rs]
  name0, r0 = every[0]
  for name, r in every:
    if r["metric"] != r0["metric"]:
      raise CompareError(
          f"the metrics differ: group {name0!r} ({r0['workdir']}) ranks children by "
          f"{r0['metric'].name}, group {name!r} ({r['workdir']}) by {r['metric'].name}; compare "
          "searches of one kind of child")
  if budget is None:
    budget = len(r0["rows"])
    for name, r in every:
      if len(r["rows"]) != budget:
        raise CompareError(
            f"the budgets differ: group {name0!r} ({r0['workdir']}) has {budget} architectures, "
            f"group {name!r} ({r['workdir']}) {len(r['rows'])}; compare the first N of each "
            "(budget N, compare.py --budget N)")
  for name, r in every:
    if len(r["rows"]) < budget:
      raise CompareError(f"group {name!r}: {r['workdir']} has {len(r['rows'])} architectures, "
                         f"fewer than the budget {budget}")
    r["rows"] = r["rows"][:budget]
  if budget < 1:
    raise CompareError(f"group {name0!r}: {r0['workdir']} has no architectures yet")
  if reward_constant is not None:
    metric = r0["metric"]
    if metric.higher_is_better:
      raise CompareError(f"a reward constant rescores perplexities; these children are ranked "
                         f"by {metric.name}")
    for _, r in every:
      r["rows"] = [{**row, "reward": 0.0 if row["failed"] or row.get(metric.name) is None
                    else reward_constant / float(row[metric.name]) ** 2} for row in r["rows"]]
  return Groups(r0["metric"], budget, runs)


def _group_notes(group: list[dict]) -> list[str]:
  """What makes a group's seeds less than independent runs of one searcher."""
  notes = []
  workdirs = [os.path.realpath(r["workdir"]) for r in group]
  if len(set(workdirs)) < len(workdirs):
    notes.append("a workdir is listed more than once")
  seeds = [r["config"].get("seed") for r in group if r["config"].get("seed") is not None]
  if len(set(seeds)) < len(seeds) and len(set(workdirs)) == len(workdirs):
    notes.append(f"the seeds repeat ({', '.join(map(str, seeds))})")
  searchers = {r["config"].get("search.searcher") for r in group} - {None}
  if len(searchers) > 1:
    notes.append(f"it mixes searchers ({', '.join(sorted(searchers))})")
  return notes


def compare_groups(loaded: Groups, ks=(1, 5, 15)) -> dict:
  """Summaries of several searchers, each run over several seeds, as JSON-friendly numbers.

  Each workdir gets :func:`summarize` (top-k of unique architectures, failed children left out)
  and :func:`wall_seconds`; each group the mean and :data:`INTERVAL` of every
  :func:`group_stat_keys` value over its seeds (:func:`t_interval`; one workdir: one run, no
  interval).

  Args:
    loaded: :func:`load_groups` of the workdirs.
    ks: the top-k sizes.

  Returns:
    ``{"metric": {"name", "higher_is_better"}, "budget", "interval", "ks", "groups": {name:
    {"workdirs", "seeds" (from config.json), "searchers", "runs" (one summary per workdir),
    "interval" (or "one run"), "notes" (repeated seeds or workdirs, mixed searchers),
    "stats": {key: {"mean", "lo", "hi", "n", "values"}}}}}``.
  """
  keys = group_stat_keys(loaded.metric, ks)
  out = {"metric": {"name": loaded.metric.name,
                    "higher_is_better": loaded.metric.higher_is_better},
         "budget": loaded.budget, "interval": INTERVAL, "ks": list(ks), "groups": {}}
  for name, group in loaded.runs.items():
    runs = []
    for r in group:
      s = summarize(r["rows"], ks, loaded.metric)
      s["wall_seconds"], s["wall_seconds_from"] = wall_seconds(r["rows"], r["steps"])
      best = best_row(ranking_rows(r["rows"]))
      s["best_reward"] = float(best["reward"]) if best else None
      runs.append({"workdir": r["workdir"], **s})
    out["groups"][name] = {
        "workdirs": [r["workdir"] for r in group],
        "seeds": [r["config"].get("seed") for r in group],
        "searchers": sorted({str(r["config"].get("search.searcher")) for r in group}),
        "runs": runs,
        "interval": INTERVAL if len(group) > 1 else "one run (no interval)",
        "notes": _group_notes(group),
        "stats": {k: t_interval([r[k] for r in runs if r.get(k) is not None]) for k in keys}}
  return out
