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
from nas_jax.tools import seeds_protocol as lib
from nas_jax.tools.seeds_protocol import SPACES

_SPACE = flags.DEFINE_enum("space", "ptb", sorted(SPACES), "The character-PTB cell search or "
                           "the digits CNN search.")
_ROOT = flags.DEFINE_string("root", None, "Folder of the runs' workdirs, seeds_SPACE.json and "
                            "fig6_SPACE.png.")
_SEEDS = flags.DEFINE_list("seeds", [str(s) for s in range(10)], "Seeds (at least 3 for a spread).")
_ARMS = flags.DEFINE_list("arms", None, "Arms to run (default: all of the space's).")
_QUICK = flags.DEFINE_boolean("quick", False, "Every config at its ':quick' size (the tests; no "
                              "measured result).")


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
  runs = lib.protocol(space, root, seeds, arms, _QUICK.value)
  result, loaded = lib.summarize(space, runs)
  print(lib.markdown(space, result))
  with open(os.path.join(root, f"seeds_{space}.json"), "w") as f:
    json.dump(result, f, indent=1)
  from nas_jax.tools import plots  # pylint: disable=import-outside-toplevel  (matplotlib)
  plots.plot_topk_groups({n: [r["rows"] for r in rs] for n, rs in loaded.runs.items()},
                         path=os.path.join(root, f"fig6_{space}.png"))


def run():
  cli.show_help(__name__, __doc__)
  cli.run_app(main)
