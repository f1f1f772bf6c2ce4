"""Compares searches side by side (e.g. REINFORCE vs random search at the same budget).

  python experiments/compare.py --workdirs /tmp/nas_digits,/tmp/nas_digits_random

Prints a markdown table of budget, mean reward of the first / last quarter of the architectures,
mean of the top-1/5/15 rewards and the best architecture; ``--json FILE`` writes the same numbers.
"""

import json
import sys

from absl import app, flags

from nas_jax.tools import analysis

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Comma-separated search workdirs.")
_JSON = flags.DEFINE_string("json", "", "Optional path for the numbers as JSON.")
flags.mark_flag_as_required("workdirs")


def main(argv):
  del argv
  results = {}
  for w in _WORKDIRS.value:
    try:
      rows = analysis.load_history(w)
    except FileNotFoundError:
      sys.exit(f"error: --workdirs: no history.jsonl in {w}; run experiments/search.py there first")
    results[w] = analysis.summarize(rows, metric=analysis.load_metric(w))
  keys = [k for k in next(iter(results.values())) if k != "best_description"]
  print("| workdir | " + " | ".join(keys) + " |")
  print("|---" * (len(keys) + 1) + "|")
  for w, s in results.items():
    cells = [f"{s[k]:.4f}" if isinstance(s[k], float) else str(s[k]) for k in keys]
    print(f"| {w} | " + " | ".join(cells) + " |")
  for w, s in results.items():
    print(f"best in {w}: {s.get('best_description', '-')}")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
