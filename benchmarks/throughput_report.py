"""The report of ``child_throughput.py``: the measurement processes' results summarised (medians,
useful FLOP/s, ratios to PyTorch; the JSON written) and printed as markdown tables.

Imports neither JAX nor nas_jax.
"""

import json
import statistics

# The per-pass values of a measurement process whose medians the report gives.
MEDIAN_KEYS = ("children_per_hour", "seconds", "compiles", "cache_hits", "compile_seconds",
               "matmul_peak_gflops")


def median_or_none(values):
  values = [v for v in values if v is not None]
  return statistics.median(values) if values else None


def default_json_path(workload: str, space: str) -> str:
  return "benchmarks/results/child_throughput" + (
      "" if workload == "digits" else f"_{workload}") + (
      "_paper" if space == "paper" else "") + ".json"


def pass_entry(name: str, p: str, vals: list, flops: dict, padded: dict, children: int) -> dict:
  """Pass ``p`` of contender ``name`` over its runs ``vals``: medians, FLOP/s, accuracies."""
  sets = "b" if p == "search" else "a"
  frac = 1.0 if name != "naive" else vals[0]["children"] / children
  pr = {"children": vals[0]["children"]}
  for k in MEDIAN_KEYS:
    if k in vals[0]:
      pr[k] = median_or_none([v[k] for v in vals])
      if k in ("compiles", "cache_hits"):
        pr[k] = int(round(pr[k]))
      if k in ("children_per_hour", "matmul_peak_gflops"):
        pr[k + "_runs"] = [v[k] for v in vals]
  useful = [flops[sets] * frac / v["seconds"] for v in vals]
  pr["useful_gflops_per_s"] = statistics.median(useful)
  pr["fraction_of_matmul_peak"] = statistics.median(
      [u / v["matmul_peak_gflops"] for u, v in zip(useful, vals)])
  if name.startswith("vmap") and sets in padded:
    pr["computed_gflops_per_s"] = statistics.median(
        [padded[sets] / v["seconds"] for v in vals])
  pr["val_accuracy"] = [median_or_none(list(accs)) for accs in
                        zip(*[v["val_accuracy"] for v in vals])]
  return pr


def add_torch_param_counts(res: dict, analysis: dict) -> None:
  """Asserts the PyTorch peer's parameter counts are JAX's; adds them to the architectures."""
  jax_counts = {"a": [a["params"] for a in analysis["archs_a"]],
                "b": [a["params"] for a in analysis["archs_b"]]}
  for s in ("a", "b"):
    assert res[f"params_{s}"] == jax_counts[s], (
        "PyTorch and JAX parameter counts differ", s, res[f"params_{s}"], jax_counts[s])
    for row, c in zip(analysis[f"archs_{s}"], res[f"params_{s}"]):
      row["params_torch"] = c


def executor_entry(name: str, rs: list, analysis: dict, flops: dict, padded: dict,
                   children: int) -> dict:
  """Contender ``name`` over its measurement processes' results ``rs``."""
  ok = [r for r in rs if "passes" in r]
  entry = {"runs": len(ok), "errors": [r["error"] for r in rs if "error" in r]}
  missing = [r["unavailable"] for r in rs if "unavailable" in r]
  if missing:
    entry["unavailable"] = missing[0]
  if ok:
    entry["device"] = ok[0]["device"]
    entry["peak_rss_mb"] = {"median": median_or_none([r["peak_rss_mb"] for r in ok]),
                            "runs": [r["peak_rss_mb"] for r in ok]}
    entry["passes"] = {p: pass_entry(name, p, [r["passes"][p] for r in ok], flops, padded,
                                     children) for p in ok[0]["passes"]}
    if name == "torch":
      add_torch_param_counts(ok[0], analysis)
      entry["torch"], entry["threads"] = ok[0]["torch"], ok[0]["threads"]
  return entry


def ratios_to_torch(executors: dict) -> dict:
  """Children per hour of every JAX contender's pass over PyTorch's same pass."""
  torch_passes = executors.get("torch", {}).get("passes", {})
  ratios = {}
  for name, entry in executors.items():
    if name == "torch" or "passes" not in entry:
      continue
    for p, pr in entry["passes"].items():
      if p in torch_passes:
        ratios[f"{name}/{p}"] = pr["children_per_hour"] / torch_passes[p]["children_per_hour"]
  return ratios


def summarise(analysis: dict, runs: dict, settings: dict) -> dict:
  """The JSON report: ``analysis`` (the analysis process's results), ``runs`` (contender ->
  its processes' results), ``settings`` (workload, m, repeats, tune_malloc, matmul_size, space)."""
  flops = {"a": sum(a["train_gflop"] for a in analysis["archs_a"]),
           "b": sum(a["train_gflop"] for a in analysis["archs_b"])}
  padded = analysis.get("vmap_padded_train_gflop", {})
  out = {"workload": settings["workload"], "device": analysis["device"],
         "platform": analysis["platform"], "children": len(analysis["archs_a"]),
         "m": settings["m"], "repeats": settings["repeats"],
         "tune_malloc": settings["tune_malloc"], "matmul_size": settings["matmul_size"],
         "space": settings["space"],
         "depths": sorted({len(a["arch"]["layers"]) for a in analysis["archs_a"]}),
         "distinct_architectures": len({json.dumps(a["arch"]) for a in analysis["archs_a"]}),
         "child_config": analysis["child_config"], "exact_children_train_gflop": flops,
         "vmap_padded_train_gflop": padded, "controller": analysis.get("controller"),
         "executors": {}, "ratios_to_torch": {}}
  for name, rs in runs.items():
    out["executors"][name] = executor_entry(name, rs, analysis, flops, padded, out["children"])
  out["ratios_to_torch"].update(ratios_to_torch(out["executors"]))
  warm = out["executors"].get("exact", {}).get("passes", {}).get("warm")
  if warm and out["controller"]:
    ctrl = analysis["controller"]["step_seconds"]
    out["controller"]["share_of_step"] = ctrl / (ctrl + settings["m"] * warm["seconds"] /
                                                 warm["children"])
  out["architectures"] = {"a": analysis["archs_a"], "b": analysis["archs_b"]}
  return out


# ---------------------------------------------------------------------------------------------
# The printed tables.


def print_throughput(out: dict) -> None:
  """The headline and the table of children per hour, compiles, FLOP/s and memory."""
  cc = out["child_config"]
  print(f"\n{out['workload']}: {out['children']} children per pass (set A: {out['distinct_architectures']} "
        f"distinct, depths {out['depths']}; the search pass: as many new ones), m={out['m']}, "
        f"{cc['epochs']} epochs x {cc['images_per_epoch_trained']:,} images trained "
        f"({cc['steps_per_epoch']} steps of {cc['batch_size']}; {cc['train_images']:,} in the "
        f"split, the partial batch dropped) + {cc['val_images']} validated, on {out['device']}; "
        f"{out['repeats']} fresh processes per contender, alternating; medians")
  print("| contender | pass | children/hour | runs | ratio to PyTorch | compilations | "
        "cache loads | compile + load s | useful GFLOP/s (% of matmul peak) | peak RSS MB |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for name, e in out["executors"].items():
    if "passes" not in e:
      why = e.get("unavailable") or "; ".join(
          err.rsplit(" | ", 1)[-1] for err in e.get("errors", [])) or "no result"
      print(f"| {name} | | {why} | | | | | | | |")
      continue
    for p, r in e["passes"].items():
      ratio = out["ratios_to_torch"].get(f"{name}/{p}")
      extra = (f", computed {r['computed_gflops_per_s']:.1f}" if "computed_gflops_per_s" in r
               else "")
      print(f"| {name} | {p} | {r['children_per_hour']:,.0f} | "
            + ", ".join(f"{v:,.0f}" for v in r["children_per_hour_runs"]) + " | "
            + (f"{ratio:.2f}x" if ratio else "") + f" | {r.get('compiles', '')} | "
            f"{r.get('cache_hits', '')} | "
            + (f"{r['compile_seconds']:.1f}" if "compile_seconds" in r else "") + " | "
            f"{r['useful_gflops_per_s']:.2f} ({100 * r['fraction_of_matmul_peak']:.1f}%){extra} | "
            f"{e['peak_rss_mb']['median']:.0f} |")


def print_peak_and_controller(out: dict) -> None:
  peaks = [v for e in out["executors"].values() for r in e.get("passes", {}).values()
           for v in r["matmul_peak_gflops_runs"]]
  if peaks:
    n = out["matmul_size"]
    print(f"dense {n}x{n} matmul peak, measured before every pass (each library its own): "
          f"{min(peaks):.0f}-{max(peaks):.0f} GFLOP/s")
  c = out["controller"] or {}
  if c:
    print(f"controller: {1e3 * c['step_seconds']:.1f} ms per step of {out['m']} (first step incl. "
          f"compile {c['first_step_seconds_incl_compile']:.1f} s)" + (
              f"; {100 * c['share_of_step']:.2f}% of a warm exact step" if "share_of_step" in c
              else ""))


def print_architectures(out: dict) -> None:
  """Per architecture of sets A and B: parameter counts and every contender's accuracy."""
  names = [n for n, e in out["executors"].items() if "passes" in e]
  for s, p in (("a", "cold"), ("b", "search")):
    rows = out["architectures"][s]
    print(f"\nset {s.upper()} ({p} pass): parameters and validation accuracy per architecture")
    print("| architecture | params JAX | params PyTorch | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for i, row in enumerate(rows):
      accs = []
      for n in names:
        pr = out["executors"][n]["passes"].get(p)
        accs.append(f"{pr['val_accuracy'][i]:.3f}" if pr and i < len(pr["val_accuracy"]) else "")
      torch_count = f"{row['params_torch']:,}" if "params_torch" in row else ""
      print(f"| {row['describe']} | {row['params']:,} | {torch_count} | " + " | ".join(accs)
            + " |")
    means = []
    for n in names:
      pr = out["executors"][n]["passes"].get(p)
      means.append(f"{statistics.mean(pr['val_accuracy']):.3f}" if pr else "")
    print("| mean | | | " + " | ".join(means) + " |")


def print_report(out: dict) -> None:
  print_throughput(out)
  print_peak_and_controller(out)
  print_architectures(out)
