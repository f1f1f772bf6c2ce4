"""The weight-sharing protocol over seeds: search + derive, retrain from scratch, compare.

  python experiments/shared_seeds.py --space digits --root /tmp/ws --seeds 0,1,2
  python experiments/shared_seeds.py --space ptb --root /tmp/ws --seeds 0,1,2
  python experiments/shared_seeds.py --space enas --root /tmp/ws --seeds 0,1,2

For every seed and searcher (``--searchers``, default REINFORCE and random search with the same
shared weights) it runs, each as its own process (``python -m nas_jax ...``) and timed:

* the weight-sharing search with its derive (``digits``: ``cnn_digits_shared.py``; ``ptb``:
  ``rnn_ptb_shared_cpu.py``; ``enas``: ``rnn_ptb_enas_shared_cpu.py``, ENAS's cell space) in
  ``ROOT/SPACE_SEARCHER_sSEED``, ``--config.seed=SEED``;
* the retrain from scratch of the derived best at the exact search's child budget
  (``digits``: ``train_child.py --arch BEST --config cnn_digits_final.py:search_budget``, into
  ``WORKDIR/retrain``; ``ptb``: ``train_lm.py --config lm_ptb_cpu.py --config.cell=WORKDIR/summary.json``,
  into ``WORKDIR/retrain``), ``--config.seed=SEED``;

and a reference at the same budget over the same seeds: ``digits``: the best architecture of the
README's exact 128-child search (``--reference``), retrained on its search's split (seed 0) from
``--config.seed=SEED``; ``ptb``: the LSTM (``--reference lstm``) as ``lm_ptb_cpu``'s LM.

Every process starts with an empty compilation cache (``--compilation_cache_dir=``) unless
``--cache`` or ``$NAS_JAX_COMPILATION_CACHE_DIR``: the wall times are those of a first run. A step
whose output exists is not rerun (its time is read back from ``ROOT/shared_seeds_SPACE.json``), so a
cut-off protocol continues. Prints a markdown table (mean over seeds ± the half-width of the 95%
t-interval) and writes ``ROOT/shared_seeds_SPACE.json``. """

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from nas_jax import cli

from nas_jax.tools import analysis, seeds_protocol as proto

DIGITS_REFERENCE = "0:7x7x32<img 1:7x7x24<0 2:7x7x16<0,1 3:7x3x24<0,1,2"
"""The best architecture of the README's main job (exact search, 128 children, seed 0)."""

SPACES = {
    "digits": {"search": "cnn_digits_shared", "retrain": "cnn_digits_final:search_budget",
               "reference": DIGITS_REFERENCE, "metric": "accuracy"},
    "ptb": {"search": "rnn_ptb_shared_cpu", "retrain": "lm_ptb_cpu", "reference": "lstm",
            "metric": "perplexity"},
    "enas": {"search": "rnn_ptb_enas_shared_cpu", "retrain": "lm_ptb_cpu", "reference": "lstm",
             "metric": "perplexity"},
}

_SPACE = flags.DEFINE_enum("space", "digits", sorted(SPACES), "Which protocol: the CNN on digits, "
                           "the paper's recurrent cell (ptb) or ENAS's (enas) on character-level "
                           "PTB.")
_ROOT = flags.DEFINE_string("root", None,
                            "Folder of the runs' workdirs and shared_seeds_SPACE.json.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (at least 3 for a spread).")
_SEARCHERS = flags.DEFINE_list("searchers", ["reinforce", "random"], "search.searcher values.")
_REFERENCE = flags.DEFINE_string("reference", None, "digits: the architecture retrained as the "
                                 "exact search's best (default: the README's main job's); ptb: the "
                                 "cell (lstm, nascell or a summary.json; default lstm). '' skips it.")
_CACHE = flags.DEFINE_boolean("cache", False, "Use the persistent compilation cache (default: "
                              "every process compiles afresh, as a first run does, unless "
                              "$NAS_JAX_COMPILATION_CACHE_DIR names one).")
_QUICK = flags.DEFINE_boolean("quick", False, "Every config at its ':quick' size (the tests; no "
                              "measured result).")
_EXTRA = flags.DEFINE_multi_string("search_flag", [], "Extra flag for every search, e.g. "
                                   "--search_flag=--config.shared.epochs=5.")


def derived_best(workdir: str) -> dict:
  """The derived best of a weight-sharing search's ``summary.json``: description, shared-weights
  score (``val_accuracy`` or ``val_ppl``) and the searcher's wall time."""
  with open(os.path.join(workdir, "summary.json")) as f:
    s = json.load(f)
  best = s["best"]
  if best.get("evaluation") != "derive":
    raise ValueError(f"{workdir}/summary.json: the best row is not a derive row (was the search "
                     "cut off before its derive?); rerun the search in that workdir")
  return {"description": best.get("description"),
          "shared_score": best.get("val_accuracy", best.get("val_ppl"))}


QUICK_DIGITS_REFERENCE = "0:3x3x8<img 1:3x3x4<0"
"""A reference architecture of the ``:quick`` digits space (filters 4 and 8)."""


def protocol(space: str, root: str, seeds: list[int], searchers: list[str], reference: str,
             cache: bool, extra: list[str], quick: bool = False) -> list[dict]:
  """Runs (or reads back) every step; one record per run: group, seed, times and results."""
  spec = SPACES[space]
  if quick:
    spec = {k: (v.split(":")[0] + ":quick" if k in ("search", "retrain") else v)
            for k, v in spec.items()}
  os.makedirs(root, exist_ok=True)
  state_path = os.path.join(root, f"shared_seeds_{space}.json")  # a root can hold both spaces
  done = {}
  if os.path.exists(state_path):
    with open(state_path) as f:
      state = json.load(f)
    if state.get("space") != space or state.get("quick", False) != quick:
      raise ValueError(f"{state_path} holds the runs of space {state.get('space')!r}"
                       f"{' (quick)' if state.get('quick') else ''}, not {space!r}"
                       f"{' (quick)' if quick else ''}; pass another --root")
    done = {(r["group"], r["seed"]): r for r in state["runs"] if r.get("complete")}
  # an empty cache per process, unless asked for one (--cache, or the environment's)
  cache_flags = [] if cache or os.environ.get("NAS_JAX_COMPILATION_CACHE_DIR") else [
      "--compilation_cache_dir="]
  records = []

  def save():
    with open(state_path + ".tmp", "w") as f:
      json.dump({"space": space, "quick": quick, "runs": records}, f, indent=1)
    os.replace(state_path + ".tmp", state_path)

  for seed in seeds:
    for group in searchers + ([f"reference:{reference}"] if reference else []):
      if (group, seed) in done:
        records.append(done[(group, seed)])
        continue
      rec = {"group": group, "seed": seed}
      if group.startswith("reference:"):
        w = os.path.join(root, f"{space}_reference_s{seed}")
        rec["search_seconds"] = None
      else:
        w = os.path.join(root, f"{space}_{group}_s{seed}")
        print(f"[{space}] search {group} seed {seed} -> {w}", flush=True)
        os.makedirs(w, exist_ok=True)
        rec["search_seconds"] = proto.run_logged(
            proto.nas_command("search", "--config", spec["search"], "--workdir", w,
                              f"--config.seed={seed}", f"--config.search.searcher={group}",
                              *cache_flags, *extra),
            os.path.join(w, "search.log"))
        rec.update(derived_best(w))
      retrain_dir = os.path.join(w, "retrain")
      os.makedirs(w, exist_ok=True)
      print(f"[{space}] retrain {group} seed {seed} -> {retrain_dir}", flush=True)
      if space == "digits":
        arch = reference if group.startswith("reference:") else rec["description"]
        cmd = proto.nas_command("train-child", "--arch", arch, "--workdir", retrain_dir,
                                "--config", spec["retrain"], f"--config.seed={seed}")
        if group.startswith("reference:"):
          cmd.append("--config.split_seed=0")  # the exact search's split: its test digits unseen
        else:
          cmd += ["--search_workdir", w]
      else:
        cell = reference if group.startswith("reference:") else os.path.join(w, "summary.json")
        cmd = proto.nas_command("train-lm", "--config", spec["retrain"], "--workdir",
                                retrain_dir, f"--config.cell={cell}", f"--config.seed={seed}")
      rec["retrain_seconds"] = proto.run_logged(cmd + cache_flags, os.path.join(w, "retrain.log"))
      rec.update(proto.retrain_result(space, retrain_dir))
      rec["complete"] = True
      records.append(rec)
      save()
  save()
  return records


def table(space: str, records: list[dict]) -> str:
  """The markdown table: one row per group, mean ± 95% t half-width over its seeds."""
  acc = SPACES[space]["metric"] == "accuracy"
  score = "val accuracy" if acc else "val ppl"
  cols = [("shared_score", f"derived best, shared-weights {score}", 3 if acc else 2),
          ("val", "retrained val" + (" accuracy" if acc else " ppl"), 3 if acc else 2),
          ("test", "retrained test" + (" accuracy" if acc else " ppl"), 3 if acc else 2),
          ("params", "params", 0), ("search_seconds", "search + derive s", 0),
          ("retrain_seconds", "retrain s", 0), ("total_seconds", "total s", 0)]
  groups: dict[str, list[dict]] = {}
  for r in records:
    groups.setdefault(r["group"], []).append(
        dict(r, total_seconds=(r["search_seconds"] or 0.0) + r["retrain_seconds"]))
  lines = [f"| group (seeds) | {' | '.join(c[1] for c in cols)} |",
           "|---|" + "---|" * len(cols)]
  for name, runs in groups.items():
    cells = []
    for key, _, digits in cols:
      vals = [r[key] for r in runs if r.get(key) is not None]
      if not vals:
        cells.append("-")
        continue
      st = analysis.t_interval(vals)
      cell = f"{st['mean']:,.{digits}f}"
      if st["lo"] is not None:
        cell += f" ± {(st['hi'] - st['lo']) / 2:,.{digits}f}"
      cells.append(cell)
    label = "reference " + name.split(":", 1)[1] if name.startswith("reference:") else name
    lines.append(f"| {label} ({','.join(str(r['seed']) for r in runs)}) | {' | '.join(cells)} |")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not _ROOT.value:
    sys.exit("error: --root is required (the folder of the runs' workdirs)")
  try:
    seeds = [int(s) for s in _SEEDS.value]
  except ValueError:
    sys.exit(f"error: --seeds must be integers, got {_SEEDS.value}")
  reference = _REFERENCE.value
  if reference is None:
    reference = SPACES[_SPACE.value]["reference"]
    if _QUICK.value and _SPACE.value == "digits":
      reference = QUICK_DIGITS_REFERENCE
  try:
    records = protocol(_SPACE.value, _ROOT.value, seeds, list(_SEARCHERS.value), reference,
                       _CACHE.value, list(_EXTRA.value), _QUICK.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(table(_SPACE.value, records))
  for r in records:
    print(f"{r['group']} s{r['seed']}: {r.get('description')}{_dead_note(r)}")


def _dead_note(record: dict) -> str:
  """" (a dead cell: ...)" for a derived cell whose output is 0 at every step, else ""."""
  summary = os.path.join(_ROOT.value, f"{_SPACE.value}_{record['group']}_s{record['seed']}",
                         "summary.json")
  if SPACES[_SPACE.value]["metric"] == "accuracy" or not os.path.exists(summary):
    return ""
  from nas_jax.training import lm_cells  # pylint: disable=import-outside-toplevel
  cell, ops, _ = lm_cells.from_name(summary)
  return (" (a dead cell: its output is 0 at every step, the retrained LM is its softmax bias)"
          if lm_cells.is_dead(cell, ops) else "")


def run():
  cli.show_help(__name__, __doc__)
  cli.run_app(main)
