"""The JAX side of ``child_throughput.py``: the workload and its architectures, the ``analysis``
process (parameter counts, training FLOPs, the controller's step) and the measurement processes
of the JAX contenders (``exact``, ``vmap``, ``vmap_grouped`` and the ``naive`` executor defined
here).

Imports JAX and nas_jax when imported: ``child_throughput`` imports it only in the processes that
run JAX (never in the parent or the PyTorch peer's process).
"""

import dataclasses
import json
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import common
import throughput_workers as protocol

# nas_jax: every import of the library in this module (its internals may move).
from nas_jax import config as config_lib
from nas_jax.core import searchers
from nas_jax.spaces import base, cnn, masked_cnn
from nas_jax.training import child, data as data_lib, masked_children, optim, trainer

JAX_PASSES = ("cold", "search", "rerun", "warm")
NAIVE_PASSES = ("cold",)


# ---------------------------------------------------------------------------------------------
# What every process agrees on: workload, architectures, keys.


def workload(name: str, max_train: int = 0):
  """(experiment config, dataset) of a workload; CIFAR-10 shapes use synthetic images."""
  if name == "digits":
    cfg, ds = common.load_experiment("cnn_digits"), data_lib.load_dataset("digits")
  else:
    cfg = common.load_experiment("cnn_cifar10", "quick")
    rng = np.random.default_rng(0)
    n_train, n_val = cfg.data.max_train, cfg.data.num_validation
    img = lambda n: rng.standard_normal((n, 32, 32, 3)).astype(np.float32)
    lab = lambda n: rng.integers(0, 10, n).astype(np.int32)
    ds = data_lib.Dataset("cifar10_shapes", img(n_train), lab(n_train), img(n_val), lab(n_val),
                          img(1), lab(1), 10, True)
  if max_train:
    ds = ds._replace(train_images=ds.train_images[:max_train],
                     train_labels=ds.train_labels[:max_train])
  return cfg, ds


def make_space(f, config_space):
  if f["space"] == "paper":
    return cnn.CNNSpace()
  return config_space


def random_archs(space, seed: int, depth: int, count: int, salt: int, avoid) -> list:
  """``count`` distinct random architectures of ``depth`` layers, none in ``avoid``."""
  out, attempt = [], 0
  while len(out) < count:
    plan = space.plan(depth)
    key = jax.random.key(seed)  # set A: the architectures of earlier versions
    if salt or attempt:
      key = jax.random.fold_in(key, salt * 1000 + attempt)
    tokens, _ = searchers.RandomSearcher().propose(None, key, plan, space.decisions, count)
    out += [a for a in (space.decode(plan, t) for t in tokens)
            if a not in avoid and a not in out][:count - len(out)]
    attempt += 1
  return out


def setup(f):
  """(space, train config, dataset, archs A, archs B) from the flags ``f`` (a dict)."""
  exp, dataset = workload(f["workload"], f["max_train"])
  parsed = config_lib.parse(exp)
  space, cfg = make_space(f, parsed.search_space), parsed.child.train
  if f["fast_compile"] != "config":
    cfg = dataclasses.replace(cfg, fast_compile=f["fast_compile"] == "true")
  if f["epochs"]:
    cfg = dataclasses.replace(cfg, epochs=f["epochs"],
                              reward_last_epochs=min(cfg.reward_last_epochs, f["epochs"]))
  n = f["children"]
  given = []
  if f["archs"]:
    with open(f["archs"]) as fh:
      text = fh.read()
    objs = ([json.loads(line) for line in text.splitlines() if line.strip()]
            if f["archs"].endswith(".jsonl") else json.loads(text))
    given = [cnn.arch_from_json(o) for o in objs]
  archs_a = given[:n] if given else random_archs(space, f["seed"], space.num_layers(0), n, 0, ())
  archs_b = [a for a in given[n:] if a not in archs_a][:n]
  if len(archs_b) < len(archs_a):  # as many new architectures of each depth as A has
    need = {}
    for a in archs_a[len(archs_b):]:
      need[len(a.layers)] = need.get(len(a.layers), 0) + 1
    for depth, count in sorted(need.items()):
      archs_b += random_archs(space, f["seed"], depth, count, 1 + depth,
                              set(archs_a) | set(archs_b))
  return space, cfg, dataset, archs_a, archs_b


def save_setup(f, cfg, dataset, archs_a, archs_b) -> None:
  """Leaves the data and architectures of every measurement process in ``f["setup_dir"]``."""
  protocol.save_setup(f["setup_dir"], dataset, dataclasses.asdict(cfg),
                      [base.to_json(a) for a in archs_a], [base.to_json(a) for a in archs_b])


def jax_setup(f):
  """(space, train config, dataset, archs A, archs B) of a JAX measurement process."""
  spec, a = protocol.load_setup(f["setup_dir"])
  exp = (common.load_experiment("cnn_digits") if f["workload"] == "digits" else
         common.load_experiment("cnn_cifar10", "quick"))
  space = make_space(f, config_lib.parse(exp).search_space)
  cfg = child.TrainConfig(**spec["train_config"])
  dataset = data_lib.Dataset(spec["name"], a["train_images"], a["train_labels"], a["val_images"],
                             a["val_labels"], a["val_images"][:1], a["val_labels"][:1],
                             spec["num_classes"], spec["augment"])
  return (space, cfg, dataset, [cnn.arch_from_json(o) for o in spec["archs_a"]],
          [cnn.arch_from_json(o) for o in spec["archs_b"]])


def child_keys(seed: int, count: int, offset: int = 0):
  return [jax.random.fold_in(jax.random.key(seed + 1), offset + i) for i in range(count)]


# ---------------------------------------------------------------------------------------------
# JAX measurement processes.


class CompileCounter:
  """XLA compilations, persistent-cache hits, and the seconds of both (jax.monitoring)."""

  def __init__(self):
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
  model = space.build(arch, dataset.num_classes)
  tx = optim.child_optimizer(cfg, trainer.steps_per_epoch(dataset, cfg))
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
  predict = jax.jit(lambda p, s, x: model.apply({"params": p, "batch_stats": s}, x))
  n, bs = x_all.shape[0], min(cfg.batch_size, x_all.shape[0])
  rng = np.random.default_rng(0)
  accs = []
  for e in range(cfg.epochs):
    perm = rng.permutation(n)[:(n // bs) * bs].reshape(-1, bs)
    (params, stats, opt_state), _ = run_epoch(params, stats, opt_state, perm,
                                              jax.random.fold_in(key, e))
    logits = predict(params, stats, jnp.asarray(dataset.val_images))
    accs.append(float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(dataset.val_labels))))
  return max(accs[-cfg.reward_last_epochs:])


def jax_matmul_peak(n: int) -> float:
  """FLOP/s of a dense n x n float32 matmul (best of 5, after a warm-up)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  times = []
  for _ in range(5):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / min(times)


def make_runner(name: str, space, cfg, dataset, dev_data, workers: int):
  """The contender ``name``'s training of a step's children: (archs, keys) -> accuracies."""

  def run_exact(batch_archs, batch_keys):  # as the exact evaluator runs a step's children
    return [r.metrics["val_accuracy"] for r in child.evaluate_many(
        [space.build(a, dataset.num_classes) for a in batch_archs], dev_data, cfg, batch_keys,
        workers=workers)]

  def run_vmap(batch_archs, batch_keys, conv_batching="unrolled"):
    out = []
    for d in sorted({len(a.layers) for a in batch_archs}):  # one vmapped program per depth
      idx = [i for i, a in enumerate(batch_archs) if len(a.layers) == d]
      out += list(zip(idx, masked_children.evaluate_masked(
          space, [batch_archs[i] for i in idx], dev_data, cfg, [batch_keys[i] for i in idx],
          conv_batching=conv_batching)))
    return [r.metrics["val_accuracy"] for _, r in sorted(out, key=lambda t: t[0])]

  def run_naive(batch_archs, batch_keys):
    return [naive_evaluate(space, a, dataset, cfg, k) for a, k in zip(batch_archs, batch_keys)]

  return {"exact": run_exact, "vmap": run_vmap, "naive": run_naive,
          "vmap_grouped": lambda a, k: run_vmap(a, k, "grouped")}[name]


def clear_memory_caches() -> None:
  """Drops JAX's and nas_jax's in-memory program caches (the persistent cache stays)."""
  jax.clear_caches()
  child._programs.cache_clear()  # pylint: disable=protected-access
  for fn in vars(masked_children).values():
    if hasattr(fn, "cache_clear"):
      fn.cache_clear()


def measure_pass(runner, archs, keys, m: int, counter: CompileCounter, matmul_size: int) -> dict:
  """One pass: the matmul peak, then ``archs`` trained m at a time, timed, compiles counted."""
  peak = jax_matmul_peak(matmul_size)
  c0, h0, s0 = counter.snapshot()
  t0 = time.perf_counter()
  accs = []
  for i in range(0, len(archs), m):
    accs += runner(archs[i:i + m], keys[i:i + m])
  wall = time.perf_counter() - t0
  c1, h1, s1 = counter.snapshot()
  return {"seconds": wall, "children": len(archs),
          "children_per_hour": len(archs) * 3600 / wall, "compiles": c1 - c0,
          "cache_hits": h1 - h0, "compile_seconds": s1 - s0,
          "matmul_peak_gflops": peak / 1e9, "val_accuracy": accs}


def jax_worker(name: str, f: dict) -> dict:
  """Measures one JAX executor: its passes in this fresh process."""
  space, cfg, dataset, archs_a, archs_b = jax_setup(f)
  if name == "naive":
    archs_a, archs_b = archs_a[:f["naive_children"]], archs_b[:f["naive_children"]]
  keys_a = child_keys(f["seed"], len(archs_a))
  keys_b = child_keys(f["seed"], len(archs_b), offset=len(archs_a))
  cache_dir = tempfile.mkdtemp(prefix="nas_jax_bench_cache_")
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  counter = CompileCounter()
  device = jax.devices()[0]
  dev_data = dataset._replace(**{k: jax.device_put(getattr(dataset, k)) for k in dataset._fields
                                 if k.endswith(("_images", "_labels"))})
  workers = child.parallel_children(f["exact_workers"])
  res_extra = {"exact_workers": workers} if name == "exact" else {}
  runner = make_runner(name, space, cfg, dataset, dev_data, workers)
  passes = [p for p in (NAIVE_PASSES if name == "naive" else JAX_PASSES)
            if p != "rerun" or f["rerun"]]
  res = {"device": device.device_kind, "platform": device.platform, "passes": {}, **res_extra}
  for p in passes:
    archs, keys = (archs_b, keys_b) if p == "search" else (archs_a, keys_a)
    if p == "rerun":
      clear_memory_caches()
    res["passes"][p] = measure_pass(runner, archs, keys, f["m"], counter, f["matmul_size"])
  res["peak_rss_mb"] = protocol.maxrss_mb()
  return res


# ---------------------------------------------------------------------------------------------
# The analysis process (untimed).


def flops_of(lowered) -> float:
  """XLA's cost analysis of a lowered program: its FLOPs."""
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))


def describe_archs(space, archs, dataset, cfg, steps: int) -> list:
  """Per architecture: its JSON form, description, JAX parameter count and the exact child's
  training GFLOPs (a train step's cost analysis x steps)."""
  x, y = jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels)
  bs = min(cfg.batch_size, dataset.train_images.shape[0])
  rows = []
  for arch in archs:
    progs = child._programs(space.build(arch, dataset.num_classes), cfg,  # pylint: disable=protected-access
                            bool(dataset.augment), steps)
    params, stats, opt = progs.init(jax.random.key(0), x[:1])  # drawn on the host: no compile
    step_flops = flops_of(progs.train_step.lower(params, stats, opt, None, x, y,
                                                 np.arange(bs), jax.random.key(0), 0))
    rows.append({"arch": base.to_json(arch), "describe": space.describe(arch),
                 "params": int(sum(np.prod(p.shape) for p in jax.tree.leaves(params))),
                 "train_gflop": step_flops * steps * cfg.epochs / 1e9})
  return rows


def padded_gflop(space, archs, dataset, cfg, steps: int, m: int) -> float:
  """Training FLOPs of the vmap executor's programs (m max-size children) for ``archs``."""
  x, y = jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels)
  bs = min(cfg.batch_size, dataset.train_images.shape[0])
  total, image_shape = 0.0, tuple(int(d) for d in dataset.train_images.shape[1:])
  for i in range(0, len(archs), m):
    batch = archs[i:i + m]
    for d in sorted({len(a.layers) for a in batch}):
      these = [a for a in batch if len(a.layers) == d]
      net = masked_cnn.MaskedCNN(space, d, image_shape, dataset.num_classes, "unrolled")
      marcs = masked_cnn.stack_archs([net.encode(a) for a in these])
      progs = masked_children.programs(net, cfg, bool(dataset.augment), (), steps)
      keys = jnp.stack(child_keys(0, len(these)))
      params, stats, opt = jax.eval_shape(progs.init, keys, marcs)
      total += flops_of(progs.train_step.lower(
          params, stats, opt, marcs, x, y, np.zeros((len(these), bs), np.int32), keys, 0))
  return total * steps * cfg.epochs / 1e9


def child_config_json(cfg, dataset, steps: int) -> dict:
  """The child budget and recipe really trained (the report's ``child_config``)."""
  n = dataset.train_images.shape[0]
  bs = min(cfg.batch_size, n)
  return {"epochs": cfg.epochs, "batch_size": cfg.batch_size,
          "train_images": int(n), "steps_per_epoch": steps,
          "images_per_epoch_trained": steps * bs,
          "val_images": int(dataset.val_images.shape[0]),
          "learning_rate": cfg.learning_rate, "momentum": cfg.momentum,
          "nesterov": cfg.nesterov, "weight_decay": cfg.weight_decay,
          "lr_schedule": cfg.lr_schedule, "fast_compile": cfg.fast_compile,
          "augment": bool(dataset.augment)}


def controller_timing(f: dict, space, depth: int) -> dict:
  """Sample + REINFORCE update of one step of m children at ``depth`` layers."""
  exp, _ = workload(f["workload"])
  searcher = searchers.ReinforceSearcher(config_lib.parse(exp).controller)
  state = searcher.init(jax.random.key(0), space.decisions)
  plan = space.plan(depth)
  times = []
  for step in range(6):
    t0 = time.perf_counter()
    tokens, _ = searcher.propose(state, jax.random.key(step), plan, space.decisions, f["m"])
    state, _ = searcher.feedback(state, tokens, np.linspace(0, 1, f["m"], dtype=np.float32),
                                 plan, space.decisions)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
  return {"first_step_seconds_incl_compile": times[0],
          "step_seconds": statistics.median(times[1:])}


def analysis_worker(f: dict) -> dict:
  """Untimed: the architectures, their JAX parameter counts and training FLOPs (exact, and as
  ``vmap`` pads them), the images really trained on, the controller's step time."""
  space, cfg, dataset, archs_a, archs_b = setup(f)
  save_setup(f, cfg, dataset, archs_a, archs_b)
  steps = trainer.steps_per_epoch(dataset, cfg)
  out = {"archs_a": describe_archs(space, archs_a, dataset, cfg, steps),
         "archs_b": describe_archs(space, archs_b, dataset, cfg, steps),
         "child_config": child_config_json(cfg, dataset, steps)}
  try:
    if any(e.startswith("vmap") for e in f["executors"]):
      out["vmap_padded_train_gflop"] = {
          s: padded_gflop(space, archs, dataset, cfg, steps, f["m"])
          for s, archs in (("a", archs_a), ("b", archs_b))}
  except ValueError as e:   # a space the masked network cannot express (strides, even filters)
    out["vmap_padded_train_gflop"] = {"error": str(e)}

  device = jax.devices()[0]
  out["device"], out["platform"] = device.device_kind, device.platform
  if f["controller"]:
    out["controller"] = controller_timing(f, space, len(archs_a[0].layers))
  return out
