"""Compares searchers over several seeds (e.g. REINFORCE vs random search at the same budget).

  python experiments/compare.py --group reinforce=/tmp/a0,/tmp/a1,/tmp/a2 \
      --group random=/tmp/r0,/tmp/r1,/tmp/r2 --json /tmp/cmp.json --plot /tmp/cmp.png
  python experiments/compare.py --workdirs /tmp/nas_digits,/tmp/nas_digits_random  # one run each

Prints a markdown table, one row per group (searcher): the mean over its seeds, +- the half-width
of the 95% t-interval (a group of one seed: one run, no interval), of the top-1/5/15 mean value of
unique architectures (deduplicated by tokens, failed children left out; an architecture sampled
more than once is valued at the mean reward of its samples, ``--best_of_samples`` at the best),
the mean reward of the
first and last quarter, the share of failed children, wall time, unique architectures and the best
value of the children's metric. ``--json FILE`` writes the numbers (per group and per workdir),
``--plot FILE.png`` the top-k curves (the paper's Fig. 6), ``--dynamics`` a table per group of
how the search moved (:func:`nas_jax.tools.tables.dynamics`). See
``nas_jax.tools.analysis.compare_groups``.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")

from absl import flags  # pylint: disable=g-import-not-at-top

from nas_jax import cli

from nas_jax.tools import analysis, tables  # pylint: disable=g-import-not-at-top

_GROUP = flags.DEFINE_multi_string(
    "group", [], "NAME=WORKDIR,WORKDIR,...: one searcher's runs, one workdir per seed; repeat the "
    "flag for each searcher.")
_WORKDIRS = flags.DEFINE_list("workdirs", None, "Comma-separated search workdirs, each a group of "
                              "one (one run).")
_BUDGET = flags.DEFINE_integer("budget", None, "Compare the first N architectures of each workdir "
                               "(default: all; they must then have the same number).")
_REWARD_CONSTANT = flags.DEFINE_float(
    "reward_constant", None, "Perplexity children: score every row as C / ppl^2 from its "
    "perplexity, for searches run with different rewards (e.g. lm_child.reward_above_unigram).")
_BEST_OF_SAMPLES = flags.DEFINE_boolean(
    "best_of_samples", False, "Value an architecture sampled more than once at its best reward "
    "(biased towards searchers that resample) instead of the mean over its samples.")
_JSON = flags.DEFINE_string("json", "", "Optional path for the numbers as JSON.")
_PLOT = flags.DEFINE_string("plot", "", "Optional path for the top-k curves (PNG).")
_DYNAMICS = flags.DEFINE_boolean("dynamics", False, "Also print, per group, how the search moved "
                                 "quarter by quarter: reward, failures, repeats, how concentrated "
                                 "the samples are, the controller's entropy.")


def _fail(msg: str):
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(2)


def _groups() -> dict[str, list[str]]:
  groups = {}
  for spec in _GROUP.value:
    name, sep, dirs = spec.partition("=")
    workdirs = [d for d in dirs.split(",") if d]
    if not sep or not name or not workdirs:
      _fail(f"--group {spec!r}: expected NAME=WORKDIR,WORKDIR,... "
            "(e.g. --group reinforce=/tmp/a0,/tmp/a1)")
    if name in groups:
      _fail(f"--group {name}: given twice; list all its workdirs in one --group")
    groups[name] = workdirs
  for w in _WORKDIRS.value or ():
    if w in groups:
      _fail(f"--workdirs {w}: given twice")
    groups[w] = [w]
  if not groups:
    _fail("give --group NAME=WORKDIR,... (repeatable) or --workdirs WORKDIR,...")
  return groups


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; use --group, --workdirs, --budget, --json, --plot, "
          "--dynamics, --reward_constant")
  flag = "/".join(f for f, v in (("--group", _GROUP.value), ("--workdirs", _WORKDIRS.value)) if v)
  try:
    loaded = analysis.load_groups(_groups(), _BUDGET.value, _REWARD_CONSTANT.value)
  except analysis.CompareError as e:
    _fail(f"{flag}: {e}")
  result = analysis.compare_groups(loaded, best_of_samples=_BEST_OF_SAMPLES.value)
  print(tables.comparison_markdown(result))
  if _DYNAMICS.value:
    print("\n" + tables.dynamics_markdown(loaded))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(result, f, indent=1)
  if _PLOT.value:
    from nas_jax.tools import plots  # pylint: disable=import-outside-toplevel
    plots.plot_topk_groups({name: [r["rows"] for r in runs] for name, runs in loaded.runs.items()},
                           ks=result["ks"], path=_PLOT.value,
                           best_of_samples=_BEST_OF_SAMPLES.value)


def run():
  cli.show_help(__name__, __doc__)
  cli.run_app(main, resumable=False)


if __name__ == "__main__":
  run()
