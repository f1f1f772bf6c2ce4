"""Children per hour of the recurrent-cell search: m cells vmapped in one program vs one by one.

  python benchmarks/cell_children.py [--m 8] [--rounds 2] [--json benchmarks/results/cell_children.json]

Trains the same m random base-8 cells (the CPU search configuration of
``experiments/configs/rnn_ptb_cpu.py``: 2-layer LMs, hidden 32, 80k training tokens, 8k validation
tokens; ``--level word`` for word-level children) twice per round: all together under
``jax.vmap`` and one after another, after a warm-up that compiles both paths. Prints a table and
writes JSON. Both paths compute the same functions (tests/test_cell_children.py checks equal
perplexities on short runs); over 100 SGD steps at learning rate 1 float rounding differences
between batched and unbatched matmuls grow, so ``same_perplexities`` may be False here.
"""

import statistics
import time

from absl import app, flags

import common

_M = flags.DEFINE_integer("m", 8, "Children per controller step.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Rounds (medians reported).")
_JSON = flags.DEFINE_string("json", "benchmarks/results/cell_children.json", "Output JSON.")
_LEVEL = flags.DEFINE_enum("level", "char", ["char", "word"], "PTB level of the children.")


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from nas_jax.training import cell_children, ptb  # pylint: disable=g-import-not-at-top
  from nas_jax import config as config_lib
  from nas_jax.core import searchers
  from nas_jax.spaces import rnn_cell  # pylint: disable=g-import-not-at-top

  exp = common.load_experiment("rnn_ptb_cpu")
  exp.data.level = _LEVEL.value
  cfg = config_lib.parse(exp).lm_child.lm
  corpus = ptb.load_ptb(exp.data.level)
  space = rnn_cell.RNNCellSpace()
  plan = space.plan()
  tokens, _ = searchers.RandomSearcher().propose(None, jax.random.key(0), plan, space.decisions,
                                                 _M.value)
  archs = [space.decode(plan, t) for t in tokens]
  keys = [jax.random.key(i) for i in range(_M.value)]
  run = lambda vmap: cell_children.evaluate_cells(space, archs, corpus, cfg, keys, vmap=vmap)
  t0 = time.perf_counter(); run(True); compile_v = time.perf_counter() - t0
  t0 = time.perf_counter(); run(False); compile_s = time.perf_counter() - t0
  times = {"vmapped": [], "sequential": []}
  results = {}
  for _ in range(_ROUNDS.value):
    for name, vmap in (("vmapped", True), ("sequential", False)):
      t0 = time.perf_counter()
      results[name] = run(vmap)
      times[name].append(time.perf_counter() - t0)
  ppl = {n: [r.metrics["val_ppl"] for r in res] for n, res in results.items()}
  same = all((a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1e-3 * a)
             for a, b in zip(ppl["vmapped"], ppl["sequential"]))
  out = {"m": _M.value, "config": "rnn_ptb_cpu", "level": exp.data.level,
         "device": jax.devices()[0].device_kind, "same_perplexities": same,
         "first_call_seconds": {"vmapped": compile_v, "sequential": compile_s}}
  print(f"{_M.value} base-8 cells, rnn_ptb_cpu child budget ({exp.data.level} level), "
        f"{_ROUNDS.value} rounds")
  print("| executor | seconds per step of m children (median) | children per hour |")
  print("|---|---|---|")
  for name, ts in times.items():
    med = statistics.median(ts)
    out[name] = {"seconds_median": med, "runs": ts, "children_per_hour": _M.value * 3600 / med}
    print(f"| {name} | {med:.2f} | {_M.value * 3600 / med:.0f} |")
  out["speedup_vmapped_over_sequential"] = (out["sequential"]["seconds_median"]
                                            / out["vmapped"]["seconds_median"])
  print(f"speed-up of vmapped over sequential: {out['speedup_vmapped_over_sequential']:.2f}x; "
        f"same perplexities: {same}")
  common.write_json(_JSON.value, out)


if __name__ == "__main__":
  app.run(main)
