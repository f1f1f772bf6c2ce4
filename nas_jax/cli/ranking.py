"""Ranking quality of the weight sharing: shared-weights scores against stand-alone training.

  python experiments/ranking.py --space digits --root /tmp/rank --n 48 --seeds 0,1
  python experiments/ranking.py --space ptb --root /tmp/rank_ptb --n 48 --seeds 0,1
  python experiments/ranking.py --space enas --root /tmp/rank_enas --n 48 --seeds 0,1

1. The weight-sharing search (``digits``: ``cnn_digits_shared``; ``ptb``: ``rnn_ptb_shared_cpu``,
   the paper's cell space; ``enas``: ``rnn_ptb_enas_shared_cpu``, ENAS's) with random search
   (the shared weights trained on uniformly drawn
   architectures, as the ranking is measured) in ``ROOT/shared``.
2. ``--n`` architectures drawn uniformly from its space (a fixed key), each scored on the whole
   validation set under the trained shared weights.
3. The same architectures each trained alone at the exact search's child budget (``digits``:
   ``cnn_digits``' child, 4 epochs on 1,297 digits, accuracy on 250; ``ptb``, ``enas``:
   ``rnn_ptb_cpu``'s,
   80,000 characters, perplexity on 8,000), once per ``--seeds`` seed.

It prints Kendall's tau and Spearman's rho (95% bootstrap intervals over architectures,
:mod:`nas_jax.tools.ranking`) between the shared scores and the stand-alone mean, and between the
first two stand-alone seeds (the ceiling: how well one training ranks another), writes
``ROOT/ranking.json`` and the scatter plot ``ROOT/ranking.png``. A rerun reuses the search (it
resumes) and recomputes the rest. ``--quick``: tiny sizes for the tests (no measured result).
"""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")

from absl import app, flags  # pylint: disable=g-import-not-at-top

from nas_jax import cli  # pylint: disable=g-import-not-at-top
from nas_jax.tools import ranking as ranking_lib  # pylint: disable=g-import-not-at-top

SPACES = ranking_lib.SPACES

_SPACE = flags.DEFINE_enum("space", "digits", sorted(SPACES), "The digits CNN space, the paper's "
                           "recurrent-cell space (ptb) or ENAS's (enas) on character-level PTB.")
_ROOT = flags.DEFINE_string("root", None, "Folder of the shared search, ranking.json, ranking.png.")
_N = flags.DEFINE_integer("n", 24, "Architectures drawn uniformly (>= 20 for a measurement).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "Stand-alone training seeds (>= 2: the ceiling).")
_QUICK = flags.DEFINE_boolean("quick", False, "Tiny sizes (cnn_digits_shared:quick; the tests).")


def measure(root: str, n: int, seeds: list[int], quick: bool = False,
            space_name: str = "digits") -> dict:
  """Runs the three parts (see the module docstring); the scores and their correlations.

  Pairs where either score is not finite (a cell that diverged) are left out of the statistics.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from nas_jax import config as config_lib, experiment  # pylint: disable=import-outside-toplevel
  from nas_jax import configs  # pylint: disable=import-outside-toplevel
  from nas_jax.core import searchers  # pylint: disable=import-outside-toplevel
  from nas_jax.tools import ranking  # pylint: disable=import-outside-toplevel
  from nas_jax.training import data, shared  # pylint: disable=import-outside-toplevel

  cfg = configs.get_config(SPACES[space_name][0], "quick" if quick else None)
  cfg.search.searcher = "random"
  workdir = os.path.join(root, "shared")
  experiment.run_search(cfg, workdir, progress=False)
  config = config_lib.parse(cfg)
  space, m = config.search_space, config.search.children_per_step
  dataset = data.load(config.data, config.seed)
  executor = experiment.parts_of(space).shared_executor(
      shared.Settings(config.shared, m, config.lm_child), space, dataset,
      {k: jax.random.key(0) for k in ("weights", "data", "aug", "dropout", "val")})
  target = {"searcher": searchers.RandomSearcher().init(None, space.decisions), **executor.init()}
  with ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints"))) as manager:
    ws = manager.restore(manager.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target))).state
  ws = {k: v for k, v in ws.items() if k != "searcher"}
  plan = space.plan(space.num_layers(0))
  tokens, _ = searchers.RandomSearcher().propose(None, jax.random.key(12345), plan,
                                                 space.decisions, n)
  archs = [space.decode(plan, t) for t in tokens]
  shared_scores = []
  for first in range(0, n, m):   # m at a time: the executor's compiled program
    chunk = archs[first:first + m]
    scores = executor.score_all(ws, chunk + [chunk[-1]] * (m - len(chunk)))
    shared_scores += [float(s) for s in np.asarray(scores)[:len(chunk)]]
  evaluate = experiment.evaluator_of(ranking_lib.standalone_config(space_name, quick))
  name = executor.metric.name
  alone = {}
  for seed in seeds:   # m at a time, as the exact search trains them (one compiled program)
    keys = [jax.random.fold_in(jax.random.key(seed), i) for i in range(n)]
    alone[seed] = [r.metrics.get(name) for first in range(0, n, m)
                   for r in evaluate(space, archs[first:first + m], dataset,
                                     keys[first:first + m])]
  ok = lambda *vs: all(v is not None and np.isfinite(v) for v in vs)
  mean_alone = [float(np.mean(v)) if ok(*v) else None for v in zip(*alone.values())]
  both = [(s, a) for s, a in zip(shared_scores, mean_alone) if ok(s, a)]
  out = {"space": space_name, "metric": name, "n": n, "seeds": seeds,
         "descriptions": [space.describe(a) for a in archs], "shared": shared_scores,
         "alone": {str(s): v for s, v in alone.items()},
         "shared_vs_alone": ranking.correlations(*zip(*both))}
  if len(seeds) >= 2:
    pairs = [(a, b) for a, b in zip(alone[seeds[0]], alone[seeds[1]]) if ok(a, b)]
    out["alone_vs_alone"] = ranking.correlations(*zip(*pairs))
  return out


def _cell(stat: dict) -> str:
  if stat["lo"] is None:
    return f"{stat['value']:.2f}"
  return f"{stat['value']:.2f} [{stat['lo']:.2f}, {stat['hi']:.2f}]"


def markdown(result: dict) -> str:
  lines = [f"| {result['metric']}, {result['space']}: pair ({result['n']} architectures) | "
           "Kendall tau [95% bootstrap] | "
           "Spearman rho [95% bootstrap] |", "|---|---|---|"]
  pairs = [("shared weights vs stand-alone (mean of seeds)", "shared_vs_alone"),
           ("stand-alone seed vs stand-alone seed (ceiling)", "alone_vs_alone")]
  for label, key in pairs:
    if key in result:
      c = result[key]
      lines.append(f"| {label} | {_cell(c['kendall_tau'])} | {_cell(c['spearman_rho'])} |")
  return "\n".join(lines)


def plot(result: dict, path: str) -> None:
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=(5, 4), dpi=110, layout="constrained")
  ax = fig.add_subplot()
  for seed, vals in result["alone"].items():
    ax.scatter(result["shared"], vals, s=14, label=f"trained alone, seed {seed}")
  metric = result["metric"].replace("_", " ")
  def wide(values):   # perplexities of diverging cells span orders of magnitude: a log axis
    v = [x for x in values if x is not None and 0 < x < float("inf")]
    return bool(v) and max(v) / min(v) > 10
  alone = [v for vals in result["alone"].values() for v in vals]
  for axis, values, label in ((ax.xaxis, result["shared"], "under the shared weights"),
                              (ax.yaxis, alone, "trained alone")):
    log = wide(values)
    if log:
      (ax.set_xscale if axis is ax.xaxis else ax.set_yscale)("log")
    else:
      axis.set_major_locator(MaxNLocator(5))
    axis.set_label_text(f"{metric} {label}{' (log scale)' if log else ''}")
  ax.legend(fontsize=8)
  fig.savefig(path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not _ROOT.value:
    cli.fail("--root is required (the folder of the shared search and the results)")
  try:
    seeds = [int(s) for s in _SEEDS.value]
  except ValueError:
    cli.fail(f"--seeds must be integers, got {_SEEDS.value}")
  if _N.value < 3:
    cli.fail(f"--n {_N.value}: at least 3 architectures (20 or more for a measurement)")
  result = measure(_ROOT.value, _N.value, seeds, _QUICK.value, _SPACE.value)
  print(markdown(result))
  with open(os.path.join(_ROOT.value, "ranking.json"), "w") as f:
    json.dump(result, f, indent=1)
  plot(result, os.path.join(_ROOT.value, "ranking.png"))


def run():
  cli.show_help(__name__, __doc__)
  cli.run_app(main)


if __name__ == "__main__":
  run()
