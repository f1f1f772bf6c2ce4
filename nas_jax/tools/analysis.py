"""Reading a search's history and comparing searchers (e.g. REINFORCE vs random search).

* :func:`load_history`, :func:`summarize`: one search; its top-k means count unique architectures
  (:func:`unique_rewards`: by ``tokens``, failed children left out), as the paper's Fig. 6 counts
  models, and :func:`unique_topk_curve` is Fig. 6's curve of one run;
* :func:`load_groups`, :func:`compare_groups`, :func:`comparison_markdown`: several searchers, each
  over several seeds, as means with 95% t-intervals (``experiments/compare.py``).
"""

from __future__ import annotations

import heapq
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


VALUE_FAIR = ("an architecture's value is the mean reward over its samples (failed children left "
              "out): every sample is a fresh training, so the best of several samples would rise "
              "with their number and favour a searcher that resamples its favourites")
VALUE_BEST_OF = ("an architecture's value is the best reward over its samples (failed children "
                 "left out): biased towards searchers that resample an architecture")


def _per_arch(rows, value, best_of_samples: bool) -> dict[str, float]:
  """``value(row)`` per architecture (:func:`arch_key`) over its rows that did not fail (and whose
  value is not None): the mean, or with ``best_of_samples`` the largest, in first-sample order."""
  samples: dict[str, list[float]] = {}
  for r in rows:
    if not r["failed"]:
      v = value(r)
      if v is not None:
        samples.setdefault(arch_key(r), []).append(float(v))
  if best_of_samples:
    return {k: max(v) for k, v in samples.items()}
  return {k: math.fsum(v) / len(v) for k, v in samples.items()}


def unique_rewards(rows: list[dict], best_of_samples: bool = False) -> dict[str, float]:
  """Each architecture's value, keyed by :func:`arch_key`, over the children that did not fail:
  the mean reward of its samples (:data:`VALUE_FAIR`), or with ``best_of_samples`` the best."""
  return _per_arch(rows, lambda r: r["reward"], best_of_samples)


def top_k_mean(rewards, k: int) -> float:
  """Mean of the k largest of ``rewards`` (fewer if fewer exist; NaN if none), duplicates and all.

  For the paper's top-k of a search (Fig. 6, unique models) use :func:`unique_top_k_mean`.
  """
  r = np.sort(np.asarray(rewards, np.float64))[::-1][:k]
  return float(r.mean()) if r.size else float("nan")


def unique_top_k_mean(rows: list[dict], k: int, best_of_samples: bool = False) -> float:
  """Mean value of the k best unique architectures (:func:`unique_rewards`: deduplicated by
  tokens, each valued at its mean reward, failed children left out); fewer if fewer exist, NaN
  if none."""
  return top_k_mean(list(unique_rewards(rows, best_of_samples).values()), k)


def unique_topk_curve(rows: list[dict], k: int, best_of_samples: bool = False) -> np.ndarray:
  """For n = 1..len(rows): :func:`unique_top_k_mean` of the first n rows (the paper's Fig. 6).

  n counts every architecture sampled, duplicates and failed children included; the mean is over
  the best ``min(k, u_n)`` of the u_n unique architectures that did not fail among them (NaN while
  u_n = 0), each valued at the mean reward of its samples so far (or the best, with
  ``best_of_samples``). O(len(rows) * u_n).
  """
  if int(k) < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  k = int(k)
  samples: dict[str, list[float]] = {}
  values: dict[str, float] = {}
  out = np.full(len(rows), np.nan)
  for n, r in enumerate(rows):
    if not r["failed"]:
      key = arch_key(r)
      samples.setdefault(key, []).append(float(r["reward"]))
      got = samples[key]
      values[key] = max(got) if best_of_samples else math.fsum(got) / len(got)
    if values:
      top = heapq.nlargest(k, values.values())
      out[n] = math.fsum(top) / len(top)
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


def summarize(rows: list[dict], ks=(1, 5, 15), metric: base.Metric = base.ACCURACY,
              best_of_samples: bool = False) -> dict:
  """Budget, failures, reward statistics of the first and last quarter, the top-k means of unique
  architectures, and the best value of ``metric`` (for a metric to minimise such as perplexity,
  also its top-5 mean over unique architectures).

  ``top{k}_mean_reward`` is :func:`unique_top_k_mean` (as the paper's Fig. 6 counts models: an
  architecture sampled twice counts once, valued at its mean reward, or with ``best_of_samples``
  its best; failed children left out); ``best_{metric}`` is the value of the best unique
  architecture (its mean over samples, or the best sample's);
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
  per_arch = unique_rewards(ranked, best_of_samples)
  unique = sorted(per_arch.values(), reverse=True)
  for k in ks:
    out[f"top{k}_mean_reward"] = top_k_mean(unique, k)
  metric_of = lambda r: r.get(metric.name)
  if metric.higher_is_better:
    best_key = max(per_arch, key=per_arch.get, default=None)
    scores = _per_arch([r for r in ranked if arch_key(r) == best_key], metric_of,
                       best_of_samples)
    if best_key is not None and scores:
      out[f"best_{metric.name}"] = scores[best_key]
  else:  # the paper compares the perplexities themselves
    lower = _per_arch(ranked, lambda r: None if metric_of(r) is None else -metric_of(r),
                      best_of_samples)
    values = sorted(-v for v in lower.values())
    if values:
      out[f"best_{metric.name}"] = values[0]
      out[f"top5_mean_{metric.name}"] = float(np.mean(values[:5]))
    best_key = min(lower, key=lambda k: -lower[k], default=None)
  first = next((r for r in ranked if not r["failed"] and arch_key(r) == best_key), None)
  if first is not None:
    out["best_description"] = first["description"]
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
                    else reward_constant / float(row[metric.name]) / float(row[metric.name])}
                   for row in r["rows"]]   # divided twice: ppl^2 overflows for a ppl of 1e200
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


def compare_groups(loaded: Groups, ks=(1, 5, 15), best_of_samples: bool = False) -> dict:
  """Summaries of several searchers, each run over several seeds, as JSON-friendly numbers.

  Each workdir gets :func:`summarize` (top-k of unique architectures, each valued at its mean
  reward over its samples or, with ``best_of_samples``, its best; failed children left out)
  and :func:`wall_seconds`; each group the mean and :data:`INTERVAL` of every
  :func:`group_stat_keys` value over its seeds (:func:`t_interval`; one workdir: one run, no
  interval).

  Args:
    loaded: :func:`load_groups` of the workdirs.
    ks: the top-k sizes.

  Returns:
    ``{"metric": {"name", "higher_is_better"}, "budget", "interval", "ks", "value" (how an
    architecture sampled more than once is valued), "groups": {name:
    {"workdirs", "seeds" (from config.json), "searchers", "runs" (one summary per workdir),
    "interval" (or "one run"), "notes" (repeated seeds or workdirs, mixed searchers),
    "stats": {key: {"mean", "lo", "hi", "n", "values"}}}}}``.
  """
  keys = group_stat_keys(loaded.metric, ks)
  out = {"metric": {"name": loaded.metric.name,
                    "higher_is_better": loaded.metric.higher_is_better},
         "budget": loaded.budget, "interval": INTERVAL, "ks": list(ks),
         "value": VALUE_BEST_OF if best_of_samples else VALUE_FAIR, "groups": {}}
  for name, group in loaded.runs.items():
    runs = []
    for r in group:
      s = summarize(r["rows"], ks, loaded.metric, best_of_samples)
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
