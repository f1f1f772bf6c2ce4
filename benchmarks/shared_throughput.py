"""Architectures evaluated per hour: the weight-sharing search against the exact search.

  python benchmarks/shared_throughput.py [--exact_steps 2] [--json benchmarks/results/shared_throughput.json]

Runs two real searches over the same space one after the other, each in a fresh process with an
empty compilation cache, and reads their workdirs: the weight-sharing search of
``cnn_digits_shared`` (its whole schedule: shared-weights training, controller steps, derive) and
the exact search of ``cnn_digits`` at the same depth (4 layers, the same filters and skip
connections: ``layers_increment=0``) for ``--exact_steps`` controller steps of 8 children, each
trained from scratch for the config's 4 epochs. An *evaluated architecture* is a row of
``history.jsonl``: a child scored on validation data (the shared search's controller-step rows,
scored on a minibatch of 64, and its derive rows, scored on all 250 validation digits; the exact
search's children, trained 4 epochs and scored on all 250). Per hour of the process's wall time
(start-up and compiling included) and of the steps' own seconds (``steps.jsonl``), and where
that time goes: the controller (sampling and updates), training (the shared weights, or the
children), and evaluation (scoring children under the shared weights). ``--order`` alternates
which search runs first when ``--repeats`` > 1. The ratio is what an exact and a weight-sharing
search cost per architecture looked at; the architectures are not scored alike (an exact child's
reward is a trained network's accuracy, a shared one's an estimate under weights no child owns).
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

import common

_EXACT_STEPS = flags.DEFINE_integer("exact_steps", 2, "Controller steps of the exact search "
                                    "(8 children each).")
_SHARED_EPOCHS = flags.DEFINE_integer("shared_epochs", 0, "Phases of the shared search (0: the "
                                      "config's 10).")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Runs of each search (medians reported); the order "
                                "alternates.")
_JSON = flags.DEFINE_string("json", "benchmarks/results/shared_throughput.json", "Output JSON.")

SEARCHES = {
    "shared": ["--config", "experiments/configs/cnn_digits_shared.py"],
    "exact": ["--config", "experiments/configs/cnn_digits.py",
              "--config.search_space.start_layers=4", "--config.search_space.layers_increment=0",
              "--config.search_space.max_layers=0"],
}


def _read(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def measure(name: str, extra: list[str]) -> dict:
  """One search in a fresh process and an empty compilation cache; its costs from the workdir."""
  with tempfile.TemporaryDirectory() as tmp:
    workdir, cache = os.path.join(tmp, "w"), os.path.join(tmp, "cache")
    cmd = [sys.executable, os.path.join(common.ROOT, "experiments", "search.py"), *SEARCHES[name],
           *extra, "--workdir", workdir, f"--compilation_cache_dir={cache}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=common.ROOT, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    rows = _read(os.path.join(workdir, "history.jsonl"))
    steps = _read(os.path.join(workdir, "steps.jsonl"))
  step_s = sum(s["seconds"] for s in steps)
  ctrl = sum(s.get("controller_seconds") or 0 for s in steps)
  if name == "shared":
    train = sum(s.get("train_seconds") or 0 for s in steps)
    evaluate = sum(s.get("children_seconds") or 0 for s in steps)
  else:  # an exact child's seconds are its training and its evaluation together
    train, evaluate = sum(s.get("children_seconds") or 0 for s in steps), 0.0
  n = len(rows)
  return {"search": name, "architectures": n, "wall_seconds": wall, "step_seconds": step_s,
          "per_hour_wall": n / wall * 3600, "per_hour_steps": n / step_s * 3600,
          "share": {"controller": ctrl / step_s, "training": train / step_s,
                    "evaluation": evaluate / step_s,
                    "other": max(0.0, 1 - (ctrl + train + evaluate) / step_s)},
          "evaluations": sorted({r.get("evaluation", "exact") for r in rows})}


def main(argv):
  del argv
  extra = {"shared": [f"--config.shared.epochs={_SHARED_EPOCHS.value}"] if _SHARED_EPOCHS.value
           else [], "exact": [f"--config.search.num_steps={_EXACT_STEPS.value}"]}
  runs = {"shared": [], "exact": []}
  for rep in range(_REPEATS.value):
    for name in (("shared", "exact") if rep % 2 == 0 else ("exact", "shared")):
      runs[name].append(measure(name, extra[name]))
      r = runs[name][-1]
      print(f"{name}: {r['architectures']} architectures in {r['wall_seconds']:.0f} s",
            file=sys.stderr)
  med = {name: {k: statistics.median(r[k] for r in rs)
                for k in ("architectures", "wall_seconds", "per_hour_wall", "per_hour_steps")}
         for name, rs in runs.items()}
  ratio_wall = med["shared"]["per_hour_wall"] / med["exact"]["per_hour_wall"]
  ratio_steps = med["shared"]["per_hour_steps"] / med["exact"]["per_hour_steps"]
  print("| search | architectures | wall | per hour (wall) | per hour (steps) | controller | "
        "training | evaluation |")
  print("|---|---|---|---|---|---|---|---|")
  for name, rs in runs.items():
    m, sh = med[name], rs[0]["share"]
    print(f"| {name} | {m['architectures']:.0f} | {m['wall_seconds']:.0f} s | "
          f"{m['per_hour_wall']:,.0f} | {m['per_hour_steps']:,.0f} | {100 * sh['controller']:.1f}% "
          f"| {100 * sh['training']:.1f}% | {100 * sh['evaluation']:.1f}% |")
  print(f"\nshared / exact, architectures per hour: {ratio_wall:.0f}x (wall), "
        f"{ratio_steps:.0f}x (steps)")
  import jax  # pylint: disable=g-import-not-at-top
  common.write_json(_JSON.value, {
      "device": jax.devices()[0].device_kind, "repeats": _REPEATS.value,
      "exact_steps": _EXACT_STEPS.value, "runs": runs, "median": med,
      "ratio_per_hour_wall": ratio_wall, "ratio_per_hour_steps": ratio_steps})


if __name__ == "__main__":
  app.run(main)
