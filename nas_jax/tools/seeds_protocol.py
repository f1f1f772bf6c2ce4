"""The seeds protocols' library (no flags): each step a process of its own (``python -m nas_jax
...``) with its output in a log, the retrained numbers read back, and ``nas-jax seeds``' runs,
statistics and table (:mod:`nas_jax.cli.seeds` is its command line).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from nas_jax.tools import analysis, tables

def run_logged(cmd: list[str], log_path: str) -> float:
  """Runs ``cmd`` with stdout and stderr into ``log_path``; its wall seconds. Exits on failure."""
  start = time.perf_counter()
  with open(log_path, "w") as log:
    rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
  if rc != 0:
    sys.exit(f"error: {' '.join(cmd)} failed (exit {rc}); its output: {log_path}")
  return time.perf_counter() - start


def nas_command(*args: str) -> list[str]:
  return [sys.executable, "-m", "nas_jax", *args]


def retrain_result(space: str, retrain_dir: str) -> dict:
  """Validation and test numbers of a retrain's ``metrics.json`` (``train_child`` or ``train_lm``)."""
  with open(os.path.join(retrain_dir, "metrics.json")) as f:
    m = json.load(f)
  if space == "digits":
    c = m["children"][0]
    return {"val": c["val_accuracy"], "test": c["test_accuracy"], "params": c["param_count"],
            "description": c["description"]}
  return {"val": m["best_valid_ppl"], "test": m["test_ppl"], "params": m["params"],
          "description": m["cell_description"]}


SPACES = {
    "ptb": {"search": "rnn_ptb_cpu:short", "retrain": "lm_ptb_cpu", "reward_constant": 80.0,
            "arms": {"unigram": ["--config.lm_child.reward_above_unigram=True"],
                     "reinforce": [], "random": ["--config.search.searcher=random"]},
            "labels": {"unigram": "REINFORCE, reward above unigram", "reinforce": "REINFORCE",
                       "random": "random search"}},
    "digits": {"search": "cnn_digits:seeds", "retrain": "cnn_digits_final:search_budget",
               "reward_constant": None,
               "arms": {"reinforce": [], "random": ["--config.search.searcher=random"]},
               "labels": {"reinforce": "REINFORCE", "random": "random search"}},
}
"""Per space: the search and retrain configs, the arms (name -> extra search flags), labels."""


def _finished(workdir: str) -> bool:
  """Has the search in ``workdir`` logged every step of its config?"""
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      steps = json.load(f)["search.num_steps"]
    with open(os.path.join(workdir, "steps.jsonl")) as f:
      return sum(1 for line in f if line.endswith("\n")) >= steps
  except (OSError, ValueError, KeyError):
    return False


def protocol(space: str, root: str, seeds: list[int], arms: list[str],
             quick: bool = False) -> dict[str, list[dict]]:
  """Runs (or finds done) every search and retrain; arm -> one record per seed."""
  spec = SPACES[space]
  search_cfg, retrain_cfg = spec["search"], spec["retrain"]
  if quick:
    search_cfg, retrain_cfg = (c.split(":")[0] + ":quick" for c in (search_cfg, retrain_cfg))
  os.makedirs(root, exist_ok=True)
  out: dict[str, list[dict]] = {arm: [] for arm in arms}
  for seed in seeds:
    for arm in arms:
      w = os.path.join(root, f"{space}_{arm}_s{seed}")
      if not _finished(w):
        print(f"[{space}] search {arm} seed {seed} -> {w}", flush=True)
        os.makedirs(w, exist_ok=True)
        run_logged(nas_command("search", "--config", search_cfg, "--workdir", w, f"--config.seed={seed}",
                  *spec["arms"][arm]), os.path.join(w, "search.log"))
      retrain_dir = os.path.join(w, "retrain")
      if not os.path.exists(os.path.join(retrain_dir, "metrics.json")):
        print(f"[{space}] retrain {arm} seed {seed} -> {retrain_dir}", flush=True)
        if space == "digits":
          cmd = nas_command("train-child", "--search_workdir", w, "--workdir", retrain_dir, "--config",
                     retrain_cfg, f"--config.seed={seed}")
        else:
          cmd = nas_command("train-lm", "--config", retrain_cfg, "--workdir", retrain_dir,
                     f"--config.cell={os.path.join(w, 'summary.json')}", f"--config.seed={seed}")
        run_logged(cmd, os.path.join(w, "retrain.log"))
      out[arm].append({"seed": seed, "workdir": w, **retrain_result(space, retrain_dir)})
  return out


def welch(a: list[float], b: list[float]) -> dict:
  """Welch's two-sample t-test (unequal variances): t, degrees of freedom, two-sided p."""
  from scipy import stats  # pylint: disable=import-outside-toplevel  # comes with scikit-learn
  if len(a) < 2 or len(b) < 2:
    return {"t": None, "df": None, "p": None}
  res = stats.ttest_ind(a, b, equal_var=False)
  return {"t": float(res.statistic), "df": float(res.df), "p": float(res.pvalue)}


def summarize(space: str, runs: dict[str, list[dict]]) -> tuple[dict, analysis.Groups]:
  """The comparison of the searches, the retrained numbers and the tests against ``random``; and
  the histories loaded (:func:`nas_jax.tools.analysis.load_groups`)."""
  spec = SPACES[space]
  loaded = analysis.load_groups({spec["labels"][a]: [r["workdir"] for r in rs]
                                 for a, rs in runs.items()}, None, spec["reward_constant"])
  comparison = analysis.compare_groups(loaded)
  out = {"space": space, "comparison": comparison, "retrained": {}, "tests": {}}
  for arm, rs in runs.items():
    out["retrained"][arm] = {k: analysis.t_interval([r[k] for r in rs]) for k in ("val", "test")}
    out["retrained"][arm]["runs"] = rs
  if "random" in runs:
    top5 = {a: comparison["groups"][spec["labels"][a]]["stats"]["top5_mean_reward"]["values"]
            for a in runs}
    for arm in (a for a in runs if a != "random"):
      out["tests"][arm] = {
          "top5_unique": welch(top5[arm], top5["random"]),
          "retrained_test": welch([r["test"] for r in runs[arm]],
                                  [r["test"] for r in runs["random"]])}
  return out, loaded


def markdown(space: str, result: dict) -> str:
  spec = SPACES[space]
  acc = space == "digits"
  unit = "accuracy" if acc else "ppl"
  lines = [tables.comparison_markdown(result["comparison"]), "",
           f"| arm (seeds) | retrained val {unit} | retrained test {unit} |", "|---|---|---|"]
  for arm, st in result["retrained"].items():
    cells = []
    for k in ("val", "test"):
      s = st[k]
      cell = f"{s['mean']:.{3 if acc else 2}f}"
      if s["lo"] is not None:
        cell += f" ± {(s['hi'] - s['lo']) / 2:.{3 if acc else 2}f}"
      cells.append(cell)
    lines.append(f"| {spec['labels'][arm]} ({len(st['runs'])}) | {' | '.join(cells)} |")
  for arm, t in result["tests"].items():
    for what, r in t.items():
      if r["p"] is not None:
        lines.append(f"Welch's t-test, {spec['labels'][arm]} vs random search, {what}: "
                     f"t = {r['t']:.2f}, df = {r['df']:.1f}, p = {r['p']:.3f}")
  return "\n".join(lines)
