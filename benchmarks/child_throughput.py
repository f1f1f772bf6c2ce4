"""Children per hour of the CNN child executors, compile counts, FLOP/s, and controller overhead.

  python benchmarks/child_throughput.py [--workload digits|cifar10_quick] [--children 16]
      [--archs FILE] [--executors exact,vmap,naive] [--json benchmarks/results/child_throughput.json]

Trains the same N architectures (``--archs``: a JSON list of architectures in the history's form,
or a ``history.jsonl``; default: N random ones of the workload's first depth, seed 0) with each
executor, in controller-step batches of m=8, at the workload's child budget:

* ``exact``: one program per distinct architecture at its exact shapes (``nas_jax.training.child``);
* ``vmap``: the m children of a batch in one program over a masked max-size network
  (``nas_jax.training.masked_children``), one compilation per depth; its convs written out one
  per child (``vmap_grouped``: plain ``jax.vmap``, whose convs become one grouped convolution);
* ``naive``: what a first JAX port does: a fresh ``jax.jit`` per child with the epoch's training
  steps inside ``lax.scan`` (``--naive_children`` of them; it is slow on CPU).

Three passes per executor: ``cold`` (empty in-memory and persistent compilation caches: what the
first controller steps of a search pay), ``rerun`` (in-memory caches dropped, the persistent cache
of the cold pass kept: a resumed or repeated run), ``warm`` (all programs compiled: the steady
state of a long search). Per pass: children per hour, XLA compilations, loads from the persistent
cache, and their seconds (``jax.monitoring``). Useful FLOP/s counts the exact children's training FLOPs (XLA's cost
analysis of each exact train step x steps) over the warm pass's wall time, against a dense
2048x2048 matmul peak measured in the same run. The controller's share is its sampling + REINFORCE
update time for one step of m children against that step's warm child time.
"""

import json
import os
import statistics
import tempfile
import time

from absl import app, flags

import common

_WORKLOAD = flags.DEFINE_enum("workload", "digits", ["digits", "cifar10_quick"], "Child workload.")
_CHILDREN = flags.DEFINE_integer("children", 16, "Architectures (a multiple of --m is best).")
_M = flags.DEFINE_integer("m", 8, "Children per controller step (a vmap batch).")
_ARCHS = flags.DEFINE_string("archs", "", "JSON list of architectures or a history.jsonl.")
_EXECUTORS = flags.DEFINE_list("executors", ["exact", "vmap", "naive"], "Executors to measure.")
_NAIVE_CHILDREN = flags.DEFINE_integer("naive_children", 2, "Children for the naive baseline.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random architectures and the children.")
_JSON = flags.DEFINE_string("json", "benchmarks/results/child_throughput.json", "Output JSON.")

def workload(name: str):
  """(experiment config, dataset) of a workload; CIFAR-10 shapes use synthetic images."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from nas_jax.training import data  # pylint: disable=g-import-not-at-top
  if name == "digits":
    return common.load_experiment("cnn_digits"), data.load_dataset("digits")
  cfg = common.load_experiment("cnn_cifar10", "quick")
  rng = np.random.default_rng(0)
  n_train, n_val = cfg.data.max_train, cfg.data.num_validation
  img = lambda n: rng.standard_normal((n, 32, 32, 3)).astype(np.float32)
  lab = lambda n: rng.integers(0, 10, n).astype(np.int32)
  return cfg, data.Dataset("cifar10_shapes", img(n_train), lab(n_train), img(n_val), lab(n_val),
                           img(1), lab(1), 10, True)


class CompileCounter:
  """XLA compilations, persistent-cache hits, and the seconds of both (jax.monitoring)."""

  def __init__(self):
    import jax  # pylint: disable=g-import-not-at-top
    self.requests, self.hits, self.seconds = 0, 0, 0.0
    event = jax._src.dispatch.BACKEND_COMPILE_EVENT  # pylint: disable=protected-access

    def on_duration(name, duration, **kwargs):
      del kwargs
      if name == event:  # a compilation, or a load from the persistent cache
        self.requests += 1
        self.seconds += duration

    def on_event(name, **kwargs):
      del kwargs
      if name == "/jax/compilation_cache/cache_hits":
        self.hits += 1
    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)

  def snapshot(self):
    return self.requests - self.hits, self.hits, self.seconds


def naive_evaluate(space, arch, dataset, cfg, key):
  """A fresh jit per child, each epoch's steps inside lax.scan; returns validation accuracy."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from nas_jax.training import data as data_lib, trainer  # pylint: disable=g-import-not-at-top
  model = space.build(arch, dataset.num_classes)
  tx = trainer.make_optimizer(cfg)
  x_all, y_all = jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels)

  def epoch(params, stats, opt_state, idx_SxB, key):
    def body(carry, inp):
      params, stats, opt_state = carry
      idx, k = inp
      x, y = x_all[idx], y_all[idx]
      if dataset.augment:
        x = data_lib.augment_batch(k, x)

      def loss_fn(p):
        logits, new = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                  mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new
      (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), new.get("batch_stats", {}), opt_state), loss
    keys = jax.random.split(key, idx_SxB.shape[0])
    return jax.lax.scan(body, (params, stats, opt_state), (idx_SxB, keys))

  variables = jax.jit(lambda k: model.init(k, x_all[:1], train=False))(key)
  params, stats = variables["params"], variables.get("batch_stats", {})
  opt_state = tx.init(params)
  run_epoch = jax.jit(epoch)
  n, bs = x_all.shape[0], min(cfg.batch_size, x_all.shape[0])
  rng = np.random.default_rng(0)
  for e in range(cfg.epochs):
    perm = rng.permutation(n)[:(n // bs) * bs].reshape(-1, bs)
    (params, stats, opt_state), _ = run_epoch(params, stats, opt_state, perm,
                                              jax.random.fold_in(key, e))
  logits = jax.jit(lambda p, s, x: model.apply({"params": p, "batch_stats": s}, x))(
      params, stats, jnp.asarray(dataset.val_images))
  return float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(dataset.val_labels)))


def matmul_peak_flops() -> float:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n = 2048
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  times = []
  for _ in range(5):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / min(times)


def exact_train_flops(space, archs, dataset, cfg) -> float:
  """Training FLOPs of the exact children (XLA cost analysis of one step x steps x epochs)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from nas_jax.training import child  # pylint: disable=g-import-not-at-top
  n = dataset.train_images.shape[0]
  bs = min(cfg.batch_size, n)
  steps = (n // bs) * cfg.epochs
  x, y = jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels)
  per_arch = {}
  total = 0.0
  for arch in archs:
    if arch not in per_arch:
      progs = child._programs(space.build(arch, dataset.num_classes), cfg, bool(dataset.augment))  # pylint: disable=protected-access
      params, stats, opt = progs.init(jax.random.key(0), x[:1])
      cost = progs.train_step.lower(params, stats, opt, None, x, y, np.arange(bs),
                                    jax.random.key(0), 0).compile().cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      per_arch[arch] = float(cost.get("flops", 0.0)) * steps
    total += per_arch[arch]
  return total


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from nas_jax.training import child  # pylint: disable=g-import-not-at-top
  from nas_jax import config as config_lib
  from nas_jax.core import searchers
  from nas_jax.spaces import cnn  # pylint: disable=g-import-not-at-top

  exp, dataset = workload(_WORKLOAD.value)
  parsed = config_lib.parse(exp)
  space, cfg = parsed.search_space, parsed.child.train
  m = _M.value
  if _ARCHS.value:
    with open(_ARCHS.value) as f:
      text = f.read()
    objs = ([json.loads(line) for line in text.splitlines() if line.strip()]
            if _ARCHS.value.endswith(".jsonl") else json.loads(text))
    archs = [cnn.arch_from_json(o) for o in objs][:_CHILDREN.value]
  else:
    plan = space.plan(space.num_layers(0))
    tokens, _ = searchers.RandomSearcher().propose(None, jax.random.key(_SEED.value), plan,
                                                   space.decisions, _CHILDREN.value)
    archs = [space.decode(plan, t) for t in tokens]
  keys = [jax.random.fold_in(jax.random.key(_SEED.value + 1), i) for i in range(len(archs))]
  depths = sorted({len(a.layers) for a in archs})
  cache_dir = tempfile.mkdtemp(prefix="nas_jax_bench_cache_")
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  counter = CompileCounter()
  device = jax.devices()[0]
  dev_data = dataset._replace(**{f: jax.device_put(getattr(dataset, f)) for f in dataset._fields
                                 if f.endswith(("_images", "_labels"))})

  def run_exact(batch_archs, batch_keys):
    return [child.evaluate(space.build(a, dataset.num_classes), dev_data, cfg, k)
            for a, k in zip(batch_archs, batch_keys)]

  def run_vmap(batch_archs, batch_keys, conv_batching="unrolled"):
    from nas_jax.training import masked_children  # pylint: disable=g-import-not-at-top
    out = []
    for d in sorted({len(a.layers) for a in batch_archs}):  # one vmapped program per depth
      idx = [i for i, a in enumerate(batch_archs) if len(a.layers) == d]
      out += list(zip(idx, masked_children.evaluate_masked(
          space, [batch_archs[i] for i in idx], dev_data, cfg, [batch_keys[i] for i in idx],
          conv_batching=conv_batching)))
    return [r for _, r in sorted(out, key=lambda t: t[0])]

  def run_naive(batch_archs, batch_keys):
    return [naive_evaluate(space, a, dataset, cfg, k) for a, k in zip(batch_archs, batch_keys)]

  def clear_memory_caches():
    jax.clear_caches()
    child._programs.cache_clear()  # pylint: disable=protected-access
    try:
      from nas_jax.training import masked_children  # pylint: disable=g-import-not-at-top
      for fn in vars(masked_children).values():
        if hasattr(fn, "cache_clear"):
          fn.cache_clear()
    except ImportError:
      pass

  runners = {"exact": run_exact, "vmap": run_vmap, "naive": run_naive,
             "vmap_grouped": lambda a, k: run_vmap(a, k, "grouped")}
  out = {"workload": _WORKLOAD.value, "device": device.device_kind, "platform": device.platform,
         "children": len(archs), "m": m, "depths": depths,
         "distinct_architectures": len(set(archs)), "child_config": dict(
             epochs=cfg.epochs, batch_size=cfg.batch_size, train_images=int(
                 dataset.train_images.shape[0]), fast_compile=cfg.fast_compile),
         "executors": {}}
  rewards = {}
  for name in _EXECUTORS.value:
    if name not in runners:
      raise app.UsageError(f"--executors: unknown executor {name!r}; use {', '.join(runners)}")
    these = archs[:_NAIVE_CHILDREN.value] if name == "naive" else archs
    passes = ("cold",) if name == "naive" else ("cold", "rerun", "warm")
    res = {"children": len(these)}
    for p in passes:
      if p == "cold":
        for f in os.listdir(cache_dir):
          os.remove(os.path.join(cache_dir, f))
      if p in ("cold", "rerun"):
        clear_memory_caches()
      c0, h0, s0 = counter.snapshot()
      t0 = time.perf_counter()
      results = []
      for i in range(0, len(these), m):
        results += runners[name](these[i:i + m], keys[i:i + m])
      wall = time.perf_counter() - t0
      c1, h1, s1 = counter.snapshot()
      res[p] = {"seconds": wall, "children_per_hour": len(these) * 3600 / wall,
                "compiles": c1 - c0, "cache_hits": h1 - h0, "compile_seconds": s1 - s0}
      if name != "naive":
        rewards[name] = [r.metrics["val_accuracy"] for r in results]
    out["executors"][name] = res

  # The same architectures and keys (initial weights drawn differently per executor): similar
  # accuracies show that the executors train the same children.
  out["mean_val_accuracy"] = {name: float(np.mean(r)) for name, r in rewards.items()}
  peak = matmul_peak_flops()
  flops = exact_train_flops(space, archs, dataset, cfg)
  out["matmul_peak_gflops"] = peak / 1e9
  out["exact_children_train_gflop"] = flops / 1e9
  for name, res in out["executors"].items():
    p = "warm" if "warm" in res else "cold"
    frac = res["children"] / len(archs)
    res["useful_gflops_per_s"] = flops * frac / res[p]["seconds"] / 1e9
    res["fraction_of_matmul_peak"] = res["useful_gflops_per_s"] * 1e9 / peak

  # Controller: sample + REINFORCE update of one step of m children at the first depth.
  from nas_jax.core import reinforce  # pylint: disable=g-import-not-at-top
  searcher = searchers.ReinforceSearcher(config_lib.parse(exp).controller)
  state = searcher.init(jax.random.key(0), space.decisions)
  plan = space.plan(depths[0])
  times = []
  for step in range(6):
    t0 = time.perf_counter()
    tokens, _ = searcher.propose(state, jax.random.key(step), plan, space.decisions, m)
    state, _ = searcher.feedback(state, tokens, np.linspace(0, 1, m, dtype=np.float32), plan,
                                 space.decisions)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
  del reinforce
  ctrl = statistics.median(times[1:])
  best = min((res["warm"]["seconds"] / res["children"] for res in out["executors"].values()
              if "warm" in res), default=None)
  out["controller"] = {"first_step_seconds_incl_compile": times[0], "step_seconds": ctrl}
  if best:
    out["controller"]["share_of_step"] = ctrl / (ctrl + m * best)

  print(f"{_WORKLOAD.value}: {len(archs)} children ({len(set(archs))} distinct, depths {depths}), "
        f"m={m}, {cfg.epochs} epochs x {dataset.train_images.shape[0]} images, on "
        f"{device.device_kind}")
  print("| executor | pass | children/hour | compilations | persistent-cache loads | "
        "compile + load s | wall s |")
  print("|---|---|---|---|---|---|---|")
  for name, res in out["executors"].items():
    for p in ("cold", "rerun", "warm"):
      if p in res:
        r = res[p]
        print(f"| {name} | {p} | {r['children_per_hour']:.0f} | {r['compiles']} | "
              f"{r['cache_hits']} | {r['compile_seconds']:.1f} | {r['seconds']:.1f} |")
  print(f"dense matmul peak {peak / 1e9:.1f} GFLOP/s; useful child-training FLOP/s: " + ", ".join(
      f"{n} {r['useful_gflops_per_s']:.2f} GFLOP/s ({100 * r['fraction_of_matmul_peak']:.1f}%)"
      for n, r in out["executors"].items()))
  c = out["controller"]
  print(f"controller: {1e3 * c['step_seconds']:.1f} ms per step of {m} (first step incl. compile "
        f"{c['first_step_seconds_incl_compile']:.1f} s)" + (
            f"; {100 * c['share_of_step']:.2f}% of a warm step" if "share_of_step" in c else ""))
  print("mean validation accuracy of the children: " + ", ".join(
      f"{n} {a:.4f}" for n, a in out["mean_val_accuracy"].items()))
  common.write_json(_JSON.value, out)


if __name__ == "__main__":
  app.run(main)
