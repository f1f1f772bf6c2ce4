"""Children per hour of the CNN child executors against a PyTorch eager peer; compiles, FLOP/s, memory.

  python benchmarks/child_throughput.py [--workload digits|cifar10_quick] [--children 16]
      [--space config|paper] [--archs FILE] [--executors exact,vmap,naive,torch] [--repeats 3]
      [--norerun] [--json benchmarks/results/child_throughput.json]
  python benchmarks/child_throughput.py --main_job_memory [--main_job_steps 2]

Architectures: random ones of the workload config's CNN space at its first depth (``--space
paper``: of the paper's space, ``CNNSpace()``: 6 layers, 24-64 filters), or ``--archs``.
Contenders (``--executors``), each training the same architectures at the workload's child budget
(the config's recipe: SGD, Nesterov momentum 0.9, lr 0.1, its weight decay; BatchNorm, global
average pooling; every epoch a random permutation, minibatches of ``batch_size``, the last
partial batch dropped, then the validation accuracy; CIFAR-10 shapes: the paper's augmentation):

* ``exact``: one program per distinct architecture at its exact shapes (``nas_jax.training.child``);
* ``vmap``: the m children of a controller step in one program over a masked max-size network
  (``nas_jax.training.masked_children``), one compilation per depth (``vmap_grouped``: plain
  ``jax.vmap``, whose convs become one grouped convolution);
* ``naive``: what a first JAX port does: a fresh ``jax.jit`` per child with the epoch's training
  steps inside ``lax.scan`` (``--naive_children`` of them; it is slow on CPU);
* ``torch``: what a PyTorch user writes: one ``nn.Module`` per architecture (NCHW, the same
  layers, padding and concatenation rules as ``CNNChild``, parameter counts asserted equal), eager,
  ``torch.optim.SGD``; skipped with "torch not installed" where it is not (``pip install
  nas_jax[bench]``), on a GPU machine run on the GPU (skipped if this torch has no CUDA).

Every measurement is a fresh process of this script (``--worker``); contenders alternate (the
order rotates each round), ``--repeats`` rounds, medians reported with the ratio of medians to
PyTorch. A process runs these passes, a dense matmul peak measured just before each one:

* ``cold``: architectures set A in the fresh process, empty in-memory and persistent compilation
  caches (what the first controller step of a search pays, one-time costs included);
* ``search``: set B, as many new architectures of the same depths (never compiled): the steady
  state of a search, where nearly every architecture is new (cold compiles included);
* ``rerun``: A again, in-memory caches dropped, persistent cache kept (a resumed run; JAX only);
* ``warm``: A again, every program compiled (JAX) / the same networks rebuilt (PyTorch).

Per pass: children per hour, XLA compilations and persistent-cache loads and their seconds
(``jax.monitoring``), and FLOP/s: *useful* FLOP/s count the exact children's training FLOPs (XLA's
cost analysis of each exact train step x steps; evaluation not counted) whatever the contender,
*computed* FLOP/s count what ``vmap`` really runs (its padded max-size network). Per process: peak
resident memory (``ru_maxrss``). Per architecture: parameter counts (JAX and PyTorch) and the
validation accuracy (max of the last ``reward_last_epochs`` epochs) of every contender, so it is
visible they train the same networks. The controller's share is its sampling + REINFORCE update
time for one step of m children against that step's warm ``exact`` child time.

``--main_job_memory`` measures instead the peak resident memory of the main job's search process
(``experiments/search.py --config experiments/configs/cnn_digits.py``) for ``--main_job_steps``
controller steps (``benchmarks/results/main_job_memory.json``).

This script holds the command line and the parent process (fresh processes, alternating); the
rest is in its sibling modules: ``throughput_workers`` (the measurement processes' protocol and
the memory probes), ``throughput_jax`` (the workload and architectures, the analysis process, the
JAX contenders' processes and the naive executor; imported only in the processes that run JAX),
``throughput_torch_peer`` (the PyTorch peer and its process) and ``throughput_report`` (the JSON
report and the printed tables).
"""

import os
import tempfile

from absl import app, flags

import common
import throughput_report as report
import throughput_torch_peer as torch_peer
import throughput_workers as protocol
# The PyTorch peer's module and its parameter count (tests/test_child_throughput.py uses them).
from throughput_torch_peer import torch_child, torch_param_count  # pylint: disable=unused-import

FLAGS = flags.FLAGS
CONTENDERS = ("exact", "vmap", "vmap_grouped", "naive", "torch")


def define_flags():
  """The command line (defined only when run as a script: the module is importable by tests)."""
  flags.DEFINE_enum("workload", "digits", ["digits", "cifar10_quick"], "Child workload.")
  flags.DEFINE_integer("children", 16, "Architectures per pass (a multiple of --m is best).")
  flags.DEFINE_integer("m", 8, "Children per controller step (a vmap batch).")
  flags.DEFINE_string("archs", "", "JSON list of architectures or a history.jsonl: set A is the "
                      "first --children, set B the next --children (random ones if too few).")
  flags.DEFINE_list("executors", ["exact", "vmap", "naive", "torch"],
                    f"Contenders to measure: {', '.join(CONTENDERS)}.")
  flags.DEFINE_enum("space", "config", ["config", "paper"], "Architectures of the workload "
                    "config's CNN space, or of the paper's (CNNSpace() defaults: 6 layers, filters "
                    "24-64, skip connections), trained with the workload's data and recipe.")
  flags.DEFINE_bool("rerun", True, "Run the rerun pass (JAX contenders; the persistent cache).")
  flags.DEFINE_integer("exact_workers", 0, "exact: children training side by side, as the exact "
                       "evaluator's config.child.parallel_children (0: one per CPU core, 1 on an "
                       "accelerator).")
  flags.DEFINE_enum("fast_compile", "config", ["config", "true", "false"], "JAX contenders: "
                    "the workload config's child.fast_compile (digits: true, for its small "
                    "children), or XLA's optimisation level 0 (true) or its default (false: "
                    "faster for the paper's 6-layer children, also when cold).")
  flags.DEFINE_integer("naive_children", 2, "Children for the naive baseline.")
  flags.DEFINE_integer("repeats", 3, "Rounds: fresh processes per contender, alternating.")
  flags.DEFINE_integer("seed", 0, "Seed of the random architectures and the children.")
  flags.DEFINE_integer("epochs", 0, "Child epochs (0: the workload's).")
  flags.DEFINE_integer("max_train", 0, "Keep only this many training images (0: all).")
  flags.DEFINE_bool("tune_malloc", False, "nas_jax.runtime.tune_malloc() in every measurement "
                    "process (the search entry points call it).")
  flags.DEFINE_string("json", "", "Output JSON (default: benchmarks/results/child_throughput"
                      "[_WORKLOAD][_paper].json, or main_job_memory.json).")
  flags.DEFINE_bool("controller", True, "Time the controller's step (compiles it, untimed).")
  flags.DEFINE_bool("main_job_memory", False, "Measure the main job's peak resident memory only.")
  flags.DEFINE_integer("main_job_steps", 2, "Controller steps of the --main_job_memory search.")
  flags.DEFINE_string("main_job_config", "experiments/configs/cnn_digits.py",
                      "Config of the --main_job_memory search.")
  flags.DEFINE_enum("worker", None, list(CONTENDERS) + ["analysis"],
                    "Internal: measure one contender (or the static analysis) in this process and "
                    "print its results as JSON.")
  flags.DEFINE_integer("matmul_size", 2048, "Side of the dense matmul whose FLOP/s is the peak.")
  flags.DEFINE_string("torch_device", "auto", "Internal: cpu, cuda, or auto.")
  flags.DEFINE_string("setup_dir", "", "Internal: the folder where the analysis process leaves "
                      "the data and architectures that every measurement process trains.")


def worker(name: str) -> None:
  """A measurement process (``--worker=name``): measures, prints its ``RESULT`` line."""
  if FLAGS.tune_malloc:
    from nas_jax import runtime  # pylint: disable=g-import-not-at-top
    runtime.tune_malloc()
  f = protocol.worker_flags(FLAGS)
  if name == "torch":
    res = torch_peer.torch_worker(f)
  else:
    # JAX and nas_jax are imported only here: not in the parent, nor in the PyTorch peer's process.
    import throughput_jax  # pylint: disable=g-import-not-at-top
    res = (throughput_jax.analysis_worker(f) if name == "analysis" else
           throughput_jax.jax_worker(name, f))
  protocol.emit(res)


# ---------------------------------------------------------------------------------------------
# The parent: fresh processes, alternating, medians.


def spawn(name: str, extra: tuple = ()) -> dict:
  """Runs ``--worker=name`` in a fresh process; its results, or {"error": ...}."""
  return protocol.spawn(os.path.abspath(__file__), name, protocol.worker_flags(FLAGS),
                        FLAGS.tune_malloc, extra)


def run_rounds(names: list, torch_extra: tuple) -> dict:
  """``--repeats`` rounds of one fresh process per contender, the order rotated each round;
  contender -> its processes' results. A contender that is unavailable leaves the rounds."""
  runs = {name: [] for name in names}
  active = list(names)
  for r in range(FLAGS.repeats):
    for name in active[r % len(active):] + active[:r % len(active)]:   # alternating, rotated
      res = spawn(name, torch_extra if name == "torch" else ())
      runs[name].append(res)
      print(f"round {r + 1}/{FLAGS.repeats} {name}: " + (
          res.get("error") or res.get("unavailable") or ", ".join(
              f"{p} {v['children_per_hour']:.0f}/h" for p, v in res["passes"].items())),
            flush=True)
    active = [n for n in active if not any("unavailable" in x for x in runs[n])]
    if not active:
      break
  return runs


def main(argv):
  del argv
  if FLAGS.worker:
    worker(FLAGS.worker)
    return
  if FLAGS.main_job_memory:
    protocol.main_job_memory(FLAGS.main_job_config, FLAGS.main_job_steps, FLAGS.json)
    return
  names = list(FLAGS.executors)
  for name in names:
    if name not in CONTENDERS:
      raise app.UsageError(f"--executors: unknown contender {name!r}; use {', '.join(CONTENDERS)}")
  if not FLAGS.setup_dir:
    FLAGS.setup_dir = tempfile.mkdtemp(prefix="nas_jax_bench_setup_")
  analysis = spawn("analysis")
  if "error" in analysis:
    raise SystemExit(f"the analysis process failed: {analysis['error']}")
  torch_extra = ("--torch_device=cuda",) if analysis["platform"] == "gpu" else ()
  runs = run_rounds(names, torch_extra)
  out = report.summarise(analysis, runs, {
      "workload": FLAGS.workload, "m": FLAGS.m, "repeats": FLAGS.repeats,
      "tune_malloc": FLAGS.tune_malloc, "matmul_size": FLAGS.matmul_size, "space": FLAGS.space})
  report.print_report(out)
  common.write_json(FLAGS.json or report.default_json_path(FLAGS.workload, FLAGS.space), out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
