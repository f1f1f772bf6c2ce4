"""The exact search over seeds: searchers x seeds, the top cell (or CNN) of each run retrained from
scratch and scored on validation and test, one table, one figure, one test.

  python experiments/seeds.py --space ptb --root /tmp/ptb_seeds --seeds 0,1,2,3,4,5,6,7,8,9
  python experiments/seeds.py --space digits --root /tmp/digits_seeds --seeds 0,1,2

For every seed and arm (``--arms``; each arm a searcher and its config flags, :data:`SPACES`) it
runs, each as its own process (``python -m nas_jax ...``):

* the search (``ptb``: ``rnn_ptb_cpu:short``, 192 cells; ``digits``: ``cnn_digits:seeds``, 64
  CNNs) in ``ROOT/SPACE_ARM_sSEED`` with ``--config.seed=SEED``;
* the retrain from scratch of that run's best architecture at the search's child budget (``ptb``:
  ``train-lm --config lm_ptb_cpu --config.cell=WORKDIR/summary.json``; ``digits``: ``train-child
  --config cnn_digits_final:search_budget --search_workdir WORKDIR``), ``--config.seed=SEED``,
  into ``WORKDIR/retrain``: its validation and **test** numbers.

A SIGKILL anywhere loses at most the process in flight: a finished search (all its steps in
``steps.jsonl``) and a finished retrain (its ``metrics.json``) are not run again, an unfinished
search resumes where it stopped, and rerunning the command continues. It prints, and writes to
``ROOT/seeds_SPACE.json``, the comparison of the searches (``nas-jax compare``'s: fair unique
top-k, each architecture valued at the mean reward of its samples; for ``ptb`` every row rescored
as 80/ppl^2, one scale for arms with different rewards), the retrained numbers per arm (mean ±
95% t half-width), Welch's two-sample t-test of each arm against ``random`` on the top-5 unique
value and on the retrained test score, and draws the top-k curves to ``ROOT/fig6_SPACE.png``.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from nas_jax import cli

from nas_jax.cli import shared_seeds
from nas_jax.tools import analysis, tables

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

_SPACE = flags.DEFINE_enum("space", "ptb", sorted(SPACES), "The character-PTB cell search or "
                           "the digits CNN search.")
_ROOT = flags.DEFINE_string("root", None, "Folder of the runs' workdirs, seeds_SPACE.json and "
                            "fig6_SPACE.png.")
_SEEDS = flags.DEFINE_list("seeds", [str(s) for s in range(10)], "Seeds (at least 3 for a spread).")
_ARMS = flags.DEFINE_list("arms", None, "Arms to run (default: all of the space's).")
_QUICK = flags.DEFINE_boolean("quick", False, "Every config at its ':quick' size (the tests; no "
                              "measured result).")


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
        shared_seeds.run_logged(shared_seeds.nas_command("search", "--config", search_cfg, "--workdir", w, f"--config.seed={seed}",
                  *spec["arms"][arm]), os.path.join(w, "search.log"))
      retrain_dir = os.path.join(w, "retrain")
      if not os.path.exists(os.path.join(retrain_dir, "metrics.json")):
        print(f"[{space}] retrain {arm} seed {seed} -> {retrain_dir}", flush=True)
        if space == "digits":
          cmd = shared_seeds.nas_command("train-child", "--search_workdir", w, "--workdir", retrain_dir, "--config",
                     retrain_cfg, f"--config.seed={seed}")
        else:
          cmd = shared_seeds.nas_command("train-lm", "--config", retrain_cfg, "--workdir", retrain_dir,
                     f"--config.cell={os.path.join(w, 'summary.json')}", f"--config.seed={seed}")
        shared_seeds.run_logged(cmd, os.path.join(w, "retrain.log"))
      out[arm].append({"seed": seed, "workdir": w, **shared_seeds.retrain_result(space, retrain_dir)})
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  space, root = _SPACE.value, _ROOT.value
  if not root:
    sys.exit("error: --root is required (the folder of the runs' workdirs)")
  try:
    seeds = [int(s) for s in _SEEDS.value]
  except ValueError:
    sys.exit(f"error: --seeds must be integers, got {_SEEDS.value}")
  arms = list(_ARMS.value or SPACES[space]["arms"])
  unknown = [a for a in arms if a not in SPACES[space]["arms"]]
  if unknown:
    sys.exit(f"error: --arms {','.join(unknown)}: not an arm of {space}; one of "
             f"{', '.join(SPACES[space]['arms'])}")
  runs = protocol(space, root, seeds, arms, _QUICK.value)
  result, loaded = summarize(space, runs)
  print(markdown(space, result))
  with open(os.path.join(root, f"seeds_{space}.json"), "w") as f:
    json.dump(result, f, indent=1)
  from nas_jax.tools import plots  # pylint: disable=import-outside-toplevel  (matplotlib)
  plots.plot_topk_groups({n: [r["rows"] for r in rs] for n, rs in loaded.runs.items()},
                         path=os.path.join(root, f"fig6_{space}.png"))


def run():
  cli.show_help(__name__, __doc__)
  app.run(main, flags_parser=cli.parse_flags)
