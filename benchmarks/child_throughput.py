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
"""

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from typing import NamedTuple

from absl import app, flags

import common

FLAGS = flags.FLAGS
CONTENDERS = ("exact", "vmap", "vmap_grouped", "naive", "torch")
JAX_PASSES = ("cold", "search", "rerun", "warm")
TORCH_PASSES = ("cold", "search", "warm")
NAIVE_PASSES = ("cold",)
TORCH_MISSING = "torch not installed"


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


# ---------------------------------------------------------------------------------------------
# The PyTorch peer.


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
  """(low pad, high pad, output size) of XLA's padding "SAME" (flax nn.Conv's) on one axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2, out


def torch_child(arch, image_hwc: tuple[int, int, int], num_classes: int):
  """The PyTorch ``nn.Module`` (NCHW) of ``nas_jax.spaces.cnn.CNNChild(arch, num_classes)``.

  The same layers (conv without bias -> BatchNorm (momentum 0.9 in flax's convention, eps 1e-5)
  -> ReLU, ``convs_per_layer`` times; optional 2x2 max pool), XLA's SAME padding (asymmetric
  where flax's is: even kernels, strides), the paper's rules (no input: the image; inputs
  zero-padded bottom/right to the largest and concatenated on depth; unconsumed layers to the
  classifier), global average pooling and a dense layer; flax's initialisers (LeCun normal,
  truncated; zero biases). ``image_hwc`` fixes the paddings, as the exact child's shapes do.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  def lecun_normal_(w, fan_in):
    std = (1.0 / fan_in) ** 0.5 / 0.87962566103423978
    nn.init.trunc_normal_(w, 0.0, std, -2 * std, 2 * std)

  def concat_padded(xs):
    if len(xs) == 1:
      return xs[0]
    h = max(x.shape[2] for x in xs)
    w = max(x.shape[3] for x in xs)
    return torch.cat([F.pad(x, (0, w - x.shape[3], 0, h - x.shape[2])) for x in xs], dim=1)

  class Child(nn.Module):
    """One architecture of the paper's CNN space."""

    def __init__(self):
      super().__init__()
      h0, w0, c0 = image_hwc
      shapes = []   # (H, W, C) of each layer's output
      self.convs, self.bns, self.pads = nn.ModuleList(), nn.ModuleList(), []
      for i, layer in enumerate(arch.layers):
        srcs = [shapes[j] for j in layer.inputs] if layer.inputs else [(h0, w0, c0)]
        h, w, c = max(s[0] for s in srcs), max(s[1] for s in srcs), sum(s[2] for s in srcs)
        for k in range(arch.convs_per_layer):
          sh, sw = (layer.stride_height, layer.stride_width) if k == 0 else (1, 1)
          top, bottom, h = same_padding(h, layer.filter_height, sh)
          left, right, w = same_padding(w, layer.filter_width, sw)
          symmetric = top == bottom and left == right
          conv = nn.Conv2d(c, layer.num_filters, (layer.filter_height, layer.filter_width),
                           (sh, sw), padding=(top, left) if symmetric else 0, bias=False)
          lecun_normal_(conv.weight, c * layer.filter_height * layer.filter_width)
          self.convs.append(conv)
          self.bns.append(nn.BatchNorm2d(layer.num_filters, eps=1e-5, momentum=0.1))
          self.pads.append(None if symmetric else (left, right, top, bottom))
          c = layer.num_filters
        if i in arch.pool_after_layers:
          h, w = -(-h // 2), -(-w // 2)
        shapes.append((h, w, c))
      features = sum(shapes[i][2] for i in unconsumed(arch))
      self.dense = nn.Linear(features, num_classes)
      lecun_normal_(self.dense.weight, features)
      nn.init.zeros_(self.dense.bias)

    def forward(self, x_NCHW):
      outputs, n = [], 0
      for i, layer in enumerate(arch.layers):
        h = concat_padded([outputs[j] for j in layer.inputs] if layer.inputs else [x_NCHW])
        for _ in range(arch.convs_per_layer):
          if self.pads[n] is not None:
            h = F.pad(h, self.pads[n])
          h = F.relu(self.bns[n](self.convs[n](h)))
          n += 1
        if i in arch.pool_after_layers:
          h = F.max_pool2d(h, 2, 2, ceil_mode=True)   # flax's SAME max pool: -inf padding
        outputs.append(h)
      h = concat_padded([outputs[i] for i in unconsumed(arch)])
      return self.dense(h.mean(dim=(2, 3)))

  return Child()


class PlainArch(NamedTuple):
  """A CNN architecture read from its JSON form without nas_jax (the PyTorch process imports
  neither JAX nor nas_jax); the fields of ``nas_jax.spaces.cnn.CNNArch``."""
  layers: tuple
  convs_per_layer: int = 1
  pool_after_layers: tuple = ()


class PlainLayer(NamedTuple):
  filter_height: int
  filter_width: int
  stride_height: int
  stride_width: int
  num_filters: int
  inputs: tuple


def plain_arch(obj) -> PlainArch:
  return PlainArch(tuple(PlainLayer(**{**l, "inputs": tuple(l["inputs"])}) for l in obj["layers"]),
                   int(obj.get("convs_per_layer", 1)), tuple(obj.get("pool_after_layers", ())))


def unconsumed(arch) -> tuple[int, ...]:
  """Layers no later layer consumes: they feed the classifier (``CNNArch.unconsumed``)."""
  used = {j for layer in arch.layers for j in layer.inputs}
  return tuple(i for i in range(len(arch.layers)) if i not in used)


def torch_param_count(module) -> int:
  return int(sum(p.numel() for p in module.parameters()))


def torch_augment(x_NCHW, gen):
  """``nas_jax.training.data.augment_batch`` in PyTorch: bilinear upsample to 36, random crop,
  random left-right flip, per example."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  b, _, h, w = x_NCHW.shape
  big = F.interpolate(x_NCHW, size=(36, 36), mode="bilinear", align_corners=False)
  dev = x_NCHW.device
  oy = torch.randint(0, 36 - h + 1, (b,), generator=gen).to(dev)
  ox = torch.randint(0, 36 - w + 1, (b,), generator=gen).to(dev)
  flip = (torch.rand((b,), generator=gen) < 0.5).to(dev)
  rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
  cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
  cols = torch.where(flip[:, None, None, None], ox[:, None, None, None] + w - 1 -
                     torch.arange(w, device=dev)[None, None, None, :], cols)
  bi = torch.arange(b, device=dev)[:, None, None, None]
  ci = torch.arange(x_NCHW.shape[1], device=dev)[None, :, None, None]
  return big[bi, ci, rows, cols]


def torch_train(arch, tensors, cfg, num_classes: int, augment: bool, seed: int, device) -> dict:
  """Trains the PyTorch child of ``arch`` as ``trainer.fit_classifiers`` trains the exact one."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  train_x, train_y, val_x, val_y = tensors
  torch.manual_seed(seed)
  gen = torch.Generator().manual_seed(seed)
  model = torch_child(arch, tuple(train_x.shape[i] for i in (2, 3, 1)), num_classes).to(device)
  opt = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum,
                        nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
  n = train_x.shape[0]
  bs = min(cfg.batch_size, n)
  total = cfg.epochs * (n // bs)

  def lr_at(k):   # trainer.learning_rate's schedules, per update k
    if cfg.lr_schedule == "constant":
      return cfg.learning_rate
    if cfg.lr_schedule == "step":
      return cfg.learning_rate * (0.1 if k >= total // 2 else 1.0) * (
          0.1 if k >= total * 3 // 4 else 1.0)
    if cfg.lr_schedule == "cosine":
      return cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * min(k, total) / total))
    raise ValueError(f"lr_schedule={cfg.lr_schedule!r}")
  step = 0
  rng = np.random.default_rng(seed)
  accs = []
  for epoch in range(1, cfg.epochs + 1):
    model.train()
    perm = torch.from_numpy(rng.permutation(n)).to(device)
    for b in range(n // bs):   # the last partial batch dropped, as fit_classifiers does
      idx = perm[b * bs:(b + 1) * bs]
      x = train_x[idx]
      if augment:
        x = torch_augment(x, gen)
      loss = F.cross_entropy(model(x), train_y[idx])
      opt.zero_grad(set_to_none=True)
      loss.backward()
      if cfg.lr_schedule != "constant":
        for group in opt.param_groups:
          group["lr"] = lr_at(step)
      opt.step()
      step += 1
    if not np.isfinite(loss.item()):
      return {"val_accuracies": accs, "val_accuracy": 0.0, "failed": True,
              "params": torch_param_count(model)}
    model.eval()
    correct = 0
    with torch.no_grad():
      eb = cfg.eval_batch_size
      for s in range(0, val_x.shape[0], eb):
        correct += int((model(val_x[s:s + eb]).argmax(-1) == val_y[s:s + eb]).sum())
    accs.append(correct / val_x.shape[0])
  return {"val_accuracies": accs, "val_accuracy": max(accs[-cfg.reward_last_epochs:]),
          "failed": False, "params": torch_param_count(model)}


# ---------------------------------------------------------------------------------------------
# What every process agrees on: workload, architectures, keys.


def workload(name: str, max_train: int = 0):
  """(experiment config, dataset) of a workload; CIFAR-10 shapes use synthetic images."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from nas_jax.training import data  # pylint: disable=g-import-not-at-top
  if name == "digits":
    cfg, ds = common.load_experiment("cnn_digits"), data.load_dataset("digits")
  else:
    cfg = common.load_experiment("cnn_cifar10", "quick")
    rng = np.random.default_rng(0)
    n_train, n_val = cfg.data.max_train, cfg.data.num_validation
    img = lambda n: rng.standard_normal((n, 32, 32, 3)).astype(np.float32)
    lab = lambda n: rng.integers(0, 10, n).astype(np.int32)
    ds = data.Dataset("cifar10_shapes", img(n_train), lab(n_train), img(n_val), lab(n_val),
                      img(1), lab(1), 10, True)
  if max_train:
    ds = ds._replace(train_images=ds.train_images[:max_train],
                     train_labels=ds.train_labels[:max_train])
  return cfg, ds


def make_space(f, config_space):
  if f["space"] == "paper":
    from nas_jax.spaces import cnn  # pylint: disable=g-import-not-at-top
    return cnn.CNNSpace()
  return config_space


def setup(f):
  """(space, train config, dataset, archs A, archs B) from the flags ``f`` (a dict)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from nas_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from nas_jax.core import searchers  # pylint: disable=g-import-not-at-top
  from nas_jax.spaces import cnn  # pylint: disable=g-import-not-at-top
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

  def random_archs(depth, count, salt, avoid):
    out, attempt = [], 0
    while len(out) < count:
      plan = space.plan(depth)
      key = jax.random.key(f["seed"])  # set A: the architectures of earlier versions
      if salt or attempt:
        key = jax.random.fold_in(key, salt * 1000 + attempt)
      tokens, _ = searchers.RandomSearcher().propose(None, key, plan, space.decisions, count)
      out += [a for a in (space.decode(plan, t) for t in tokens)
              if a not in avoid and a not in out][:count - len(out)]
      attempt += 1
    return out

  archs_a = given[:n] if given else random_archs(space.num_layers(0), n, 0, ())
  archs_b = [a for a in given[n:] if a not in archs_a][:n]
  if len(archs_b) < len(archs_a):  # as many new architectures of each depth as A has
    need = {}
    for a in archs_a[len(archs_b):]:
      need[len(a.layers)] = need.get(len(a.layers), 0) + 1
    for depth, count in sorted(need.items()):
      archs_b += random_archs(depth, count, 1 + depth, set(archs_a) | set(archs_b))
  return space, cfg, dataset, archs_a, archs_b


def save_setup(f, cfg, dataset, archs_a, archs_b) -> None:
  """Leaves the data and architectures of every measurement process in ``f["setup_dir"]``."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from nas_jax.spaces import base  # pylint: disable=g-import-not-at-top
  np.savez(os.path.join(f["setup_dir"], "data.npz"), **{
      k: getattr(dataset, k) for k in ("train_images", "train_labels", "val_images",
                                       "val_labels")})
  with open(os.path.join(f["setup_dir"], "setup.json"), "w") as fh:
    json.dump({"name": dataset.name, "num_classes": dataset.num_classes,
               "augment": bool(dataset.augment), "train_config": dataclasses.asdict(cfg),
               "archs_a": [base.to_json(a) for a in archs_a],
               "archs_b": [base.to_json(a) for a in archs_b]}, fh)


def load_setup(f):
  """(setup.json as a dict, the data arrays) that the analysis process left; numpy only."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  with open(os.path.join(f["setup_dir"], "setup.json")) as fh:
    spec = json.load(fh)
  with np.load(os.path.join(f["setup_dir"], "data.npz")) as z:
    arrays = {k: z[k] for k in z.files}
  return spec, arrays


def jax_setup(f):
  """(space, train config, dataset, archs A, archs B) of a JAX measurement process."""
  from nas_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from nas_jax.spaces import cnn  # pylint: disable=g-import-not-at-top
  from nas_jax.training import child, data  # pylint: disable=g-import-not-at-top
  spec, a = load_setup(f)
  exp = (common.load_experiment("cnn_digits") if f["workload"] == "digits" else
         common.load_experiment("cnn_cifar10", "quick"))
  space = make_space(f, config_lib.parse(exp).search_space)
  cfg = child.TrainConfig(**spec["train_config"])
  dataset = data.Dataset(spec["name"], a["train_images"], a["train_labels"], a["val_images"],
                         a["val_labels"], a["val_images"][:1], a["val_labels"][:1],
                         spec["num_classes"], spec["augment"])
  return (space, cfg, dataset, [cnn.arch_from_json(o) for o in spec["archs_a"]],
          [cnn.arch_from_json(o) for o in spec["archs_b"]])


def child_keys(seed: int, count: int, offset: int = 0):
  import jax  # pylint: disable=g-import-not-at-top
  return [jax.random.fold_in(jax.random.key(seed + 1), offset + i) for i in range(count)]


def worker_flags() -> dict:
  return {k: FLAGS[k].value for k in ("workload", "children", "m", "archs", "naive_children",
                                      "seed", "epochs", "max_train", "torch_device", "controller",
                                      "matmul_size", "setup_dir", "executors", "space", "rerun",
                                      "exact_workers", "fast_compile")}


def maxrss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


# ---------------------------------------------------------------------------------------------
# JAX measurement processes.


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
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  times = []
  for _ in range(5):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / min(times)


def torch_matmul_peak(device, n: int) -> float:
  import torch  # pylint: disable=g-import-not-at-top
  a = torch.randn(n, n, device=device)
  sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
  (a @ a).sum().item()
  times = []
  for _ in range(5):
    t0 = time.perf_counter()
    a @ a
    sync()
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / min(times)


def jax_worker(name: str, f: dict) -> dict:
  """Measures one JAX executor: its passes in this fresh process."""
  import jax  # pylint: disable=g-import-not-at-top
  from nas_jax.training import child  # pylint: disable=g-import-not-at-top
  space, cfg, dataset, archs_a, archs_b = jax_setup(f)
  m = f["m"]
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

  def run_exact(batch_archs, batch_keys):  # as the exact evaluator runs a step's children
    return [r.metrics["val_accuracy"] for r in child.evaluate_many(
        [space.build(a, dataset.num_classes) for a in batch_archs], dev_data, cfg, batch_keys,
        workers=workers)]

  def run_vmap(batch_archs, batch_keys, conv_batching="unrolled"):
    from nas_jax.training import masked_children  # pylint: disable=g-import-not-at-top
    out = []
    for d in sorted({len(a.layers) for a in batch_archs}):  # one vmapped program per depth
      idx = [i for i, a in enumerate(batch_archs) if len(a.layers) == d]
      out += list(zip(idx, masked_children.evaluate_masked(
          space, [batch_archs[i] for i in idx], dev_data, cfg, [batch_keys[i] for i in idx],
          conv_batching=conv_batching)))
    return [r.metrics["val_accuracy"] for _, r in sorted(out, key=lambda t: t[0])]

  def run_naive(batch_archs, batch_keys):
    return [naive_evaluate(space, a, dataset, cfg, k) for a, k in zip(batch_archs, batch_keys)]

  def clear_memory_caches():
    jax.clear_caches()
    child._programs.cache_clear()  # pylint: disable=protected-access
    from nas_jax.training import masked_children  # pylint: disable=g-import-not-at-top
    for fn in vars(masked_children).values():
      if hasattr(fn, "cache_clear"):
        fn.cache_clear()

  runner = {"exact": run_exact, "vmap": run_vmap, "naive": run_naive,
            "vmap_grouped": lambda a, k: run_vmap(a, k, "grouped")}[name]
  passes = [p for p in (NAIVE_PASSES if name == "naive" else JAX_PASSES)
            if p != "rerun" or f["rerun"]]
  res = {"device": device.device_kind, "platform": device.platform, "passes": {}, **res_extra}
  for p in passes:
    archs, keys = (archs_b, keys_b) if p == "search" else (archs_a, keys_a)
    if p == "rerun":
      clear_memory_caches()
    peak = jax_matmul_peak(f["matmul_size"])
    c0, h0, s0 = counter.snapshot()
    t0 = time.perf_counter()
    accs = []
    for i in range(0, len(archs), m):
      accs += runner(archs[i:i + m], keys[i:i + m])
    wall = time.perf_counter() - t0
    c1, h1, s1 = counter.snapshot()
    res["passes"][p] = {"seconds": wall, "children": len(archs),
                        "children_per_hour": len(archs) * 3600 / wall, "compiles": c1 - c0,
                        "cache_hits": h1 - h0, "compile_seconds": s1 - s0,
                        "matmul_peak_gflops": peak / 1e9, "val_accuracy": accs}
  res["peak_rss_mb"] = maxrss_mb()
  return res


def torch_worker(f: dict) -> dict:
  """Measures the PyTorch peer: its passes in this fresh process."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {"unavailable": TORCH_MISSING}
  want = f["torch_device"]
  if want == "cuda" and not torch.cuda.is_available():
    return {"unavailable": "this torch has no CUDA device (the JAX contenders ran on the GPU)"}
  device = torch.device("cuda" if want == "cuda" or (want == "auto" and torch.cuda.is_available())
                        else "cpu")
  spec, arrays = load_setup(f)
  cfg = types.SimpleNamespace(**spec["train_config"])
  archs_a = [plain_arch(o) for o in spec["archs_a"]]
  archs_b = [plain_arch(o) for o in spec["archs_b"]]
  as_t = lambda a: torch.from_numpy(a).to(device)
  tensors = (as_t(arrays["train_images"].transpose(0, 3, 1, 2).copy()),
             as_t(arrays["train_labels"].astype("int64")),
             as_t(arrays["val_images"].transpose(0, 3, 1, 2).copy()),
             as_t(arrays["val_labels"].astype("int64")))
  res = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
         "platform": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
         "passes": {}}
  for p in TORCH_PASSES:
    archs, offset = (archs_b, len(archs_a)) if p == "search" else (archs_a, 0)
    peak = torch_matmul_peak(device, f["matmul_size"])
    t0 = time.perf_counter()
    out = [torch_train(a, tensors, cfg, spec["num_classes"], spec["augment"],
                       f["seed"] * 100003 + offset + i, device) for i, a in enumerate(archs)]
    if device.type == "cuda":
      torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    res["passes"][p] = {"seconds": wall, "children": len(archs),
                        "children_per_hour": len(archs) * 3600 / wall,
                        "matmul_peak_gflops": peak / 1e9,
                        "val_accuracy": [o["val_accuracy"] for o in out]}
    if p == "cold":
      res["params_a"] = [o["params"] for o in out]
    if p == "search":
      res["params_b"] = [o["params"] for o in out]
  res["peak_rss_mb"] = maxrss_mb()
  return res


def analysis_worker(f: dict) -> dict:
  """Untimed: the architectures, their JAX parameter counts and training FLOPs (exact, and as
  ``vmap`` pads them), the images really trained on, the controller's step time."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from nas_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from nas_jax.core import searchers  # pylint: disable=g-import-not-at-top
  from nas_jax.spaces import base, masked_cnn  # pylint: disable=g-import-not-at-top
  from nas_jax.training import child, masked_children, trainer  # pylint: disable=g-import-not-at-top
  space, cfg, dataset, archs_a, archs_b = setup(f)
  save_setup(f, cfg, dataset, archs_a, archs_b)
  n = dataset.train_images.shape[0]
  bs = min(cfg.batch_size, n)
  steps = trainer.steps_per_epoch(dataset, cfg)
  x, y = jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels)

  def flops_of(lowered):
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))

  def describe(archs):
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

  def padded_gflop(archs):
    """Training FLOPs of the vmap executor's programs (m max-size children) for ``archs``."""
    total, image_shape = 0.0, tuple(int(d) for d in dataset.train_images.shape[1:])
    for i in range(0, len(archs), f["m"]):
      batch = archs[i:i + f["m"]]
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

  out = {"archs_a": describe(archs_a), "archs_b": describe(archs_b),
         "child_config": {"epochs": cfg.epochs, "batch_size": cfg.batch_size,
                          "train_images": int(n), "steps_per_epoch": steps,
                          "images_per_epoch_trained": steps * bs,
                          "val_images": int(dataset.val_images.shape[0]),
                          "learning_rate": cfg.learning_rate, "momentum": cfg.momentum,
                          "nesterov": cfg.nesterov, "weight_decay": cfg.weight_decay,
                          "lr_schedule": cfg.lr_schedule, "fast_compile": cfg.fast_compile,
                          "augment": bool(dataset.augment)}}
  try:
    if any(e.startswith("vmap") for e in f["executors"]):
      out["vmap_padded_train_gflop"] = {"a": padded_gflop(archs_a), "b": padded_gflop(archs_b)}
  except ValueError as e:   # a space the masked network cannot express (strides, even filters)
    out["vmap_padded_train_gflop"] = {"error": str(e)}

  device = jax.devices()[0]
  out["device"], out["platform"] = device.device_kind, device.platform
  if not f["controller"]:
    return out
  # Controller: sample + REINFORCE update of one step of m children at the first depth.
  exp, _ = workload(f["workload"])
  searcher = searchers.ReinforceSearcher(config_lib.parse(exp).controller)
  state = searcher.init(jax.random.key(0), space.decisions)
  plan = space.plan(len(archs_a[0].layers))
  times = []
  for step in range(6):
    t0 = time.perf_counter()
    tokens, _ = searcher.propose(state, jax.random.key(step), plan, space.decisions, f["m"])
    state, _ = searcher.feedback(state, tokens, np.linspace(0, 1, f["m"], dtype=np.float32),
                                 plan, space.decisions)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
  out["controller"] = {"first_step_seconds_incl_compile": times[0],
                       "step_seconds": statistics.median(times[1:])}
  return out


def worker(name: str) -> None:
  if FLAGS.tune_malloc:
    from nas_jax import runtime  # pylint: disable=g-import-not-at-top
    runtime.tune_malloc()
  f = worker_flags()
  if name == "analysis":
    res = analysis_worker(f)
  elif name == "torch":
    res = torch_worker(f)
  else:
    res = jax_worker(name, f)
  print("RESULT " + json.dumps(res))


# ---------------------------------------------------------------------------------------------
# The parent: fresh processes, alternating, medians.


def spawn(name: str, extra: tuple = ()) -> dict:
  """Runs ``--worker=name`` in a fresh process; its results, or {"error": ...}."""
  f = worker_flags()
  cmd = [sys.executable, os.path.abspath(__file__), f"--worker={name}",
         "--tune_malloc" if FLAGS.tune_malloc else "--notune_malloc", *extra]
  cmd += [f"--{k}={','.join(v) if isinstance(v, list) else v}" for k, v in f.items()
          if k != "torch_device"]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
  return {"error": f"exit code {proc.returncode}: " + " | ".join(tail)}


def median_or_none(values):
  values = [v for v in values if v is not None]
  return statistics.median(values) if values else None


def main_job_memory() -> None:
  """Peak RSS of the main job's search process (os.wait4: the process and its waited children)."""
  workdir = tempfile.mkdtemp(prefix="nas_jax_main_job_")
  cache = tempfile.mkdtemp(prefix="nas_jax_main_job_cache_")
  cmd = [sys.executable, os.path.join(common.ROOT, "experiments", "search.py"),
         f"--config={FLAGS.main_job_config}", f"--workdir={workdir}",
         f"--config.search.num_steps={FLAGS.main_job_steps}", f"--compilation_cache_dir={cache}"]
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          cwd=common.ROOT)
  err = proc.stderr.read()
  _, status, usage = os.wait4(proc.pid, 0)
  proc.returncode = os.waitstatus_to_exitcode(status)
  wall = time.perf_counter() - t0
  if proc.returncode != 0:
    raise SystemExit(f"search failed (exit code {proc.returncode}): {err[-2000:]}")
  children = 0
  hist = os.path.join(workdir, "history.jsonl")
  if os.path.exists(hist):
    with open(hist) as fh:
      children = sum(1 for line in fh if line.strip())
  out = {"command": " ".join(["python", "experiments/search.py"] + cmd[2:3] +
                             [f"--config.search.num_steps={FLAGS.main_job_steps}"]),
         "controller_steps": FLAGS.main_job_steps, "children": children, "seconds": wall,
         "peak_rss_mb": usage.ru_maxrss / 1024.0}
  print(f"main job ({out['command']}): {children} children in {wall:.0f} s, peak resident "
        f"memory {out['peak_rss_mb']:.0f} MB")
  common.write_json(FLAGS.json or "benchmarks/results/main_job_memory.json", out)


def main(argv):
  del argv
  if FLAGS.worker:
    worker(FLAGS.worker)
    return
  if FLAGS.main_job_memory:
    main_job_memory()
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

  cc = analysis["child_config"]
  flops = {"a": sum(a["train_gflop"] for a in analysis["archs_a"]),
           "b": sum(a["train_gflop"] for a in analysis["archs_b"])}
  padded = analysis.get("vmap_padded_train_gflop", {})
  out = {"workload": FLAGS.workload, "device": analysis["device"],
         "platform": analysis["platform"], "children": len(analysis["archs_a"]), "m": FLAGS.m,
         "repeats": FLAGS.repeats, "tune_malloc": FLAGS.tune_malloc,
         "matmul_size": FLAGS.matmul_size, "space": FLAGS.space,
         "depths": sorted({len(a["arch"]["layers"]) for a in analysis["archs_a"]}),
         "distinct_architectures": len({json.dumps(a["arch"]) for a in analysis["archs_a"]}),
         "child_config": cc, "exact_children_train_gflop": flops,
         "vmap_padded_train_gflop": padded, "controller": analysis.get("controller"),
         "executors": {}, "ratios_to_torch": {}}
  for name, rs in runs.items():
    ok = [r for r in rs if "passes" in r]
    entry = {"runs": len(ok), "errors": [r["error"] for r in rs if "error" in r]}
    missing = [r["unavailable"] for r in rs if "unavailable" in r]
    if missing:
      entry["unavailable"] = missing[0]
    if ok:
      entry["device"] = ok[0]["device"]
      entry["peak_rss_mb"] = {"median": median_or_none([r["peak_rss_mb"] for r in ok]),
                              "runs": [r["peak_rss_mb"] for r in ok]}
      entry["passes"] = {}
      for p in ok[0]["passes"]:
        vals = [r["passes"][p] for r in ok]
        sets = "b" if p == "search" else "a"
        frac = 1.0 if name != "naive" else vals[0]["children"] / out["children"]
        pr = {"children": vals[0]["children"]}
        for k in ("children_per_hour", "seconds", "compiles", "cache_hits", "compile_seconds",
                  "matmul_peak_gflops"):
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
        entry["passes"][p] = pr
      if name == "torch":
        jax_counts = {"a": [a["params"] for a in analysis["archs_a"]],
                      "b": [a["params"] for a in analysis["archs_b"]]}
        for s in ("a", "b"):
          assert ok[0][f"params_{s}"] == jax_counts[s], (
              "PyTorch and JAX parameter counts differ", s, ok[0][f"params_{s}"], jax_counts[s])
          for row, c in zip(analysis[f"archs_{s}"], ok[0][f"params_{s}"]):
            row["params_torch"] = c
        entry["torch"], entry["threads"] = ok[0]["torch"], ok[0]["threads"]
    out["executors"][name] = entry
  torch_passes = out["executors"].get("torch", {}).get("passes", {})
  for name, entry in out["executors"].items():
    if name == "torch" or "passes" not in entry:
      continue
    for p, pr in entry["passes"].items():
      if p in torch_passes:
        out["ratios_to_torch"][f"{name}/{p}"] = (pr["children_per_hour"] /
                                                  torch_passes[p]["children_per_hour"])
  warm = out["executors"].get("exact", {}).get("passes", {}).get("warm")
  if warm and out["controller"]:
    ctrl = analysis["controller"]["step_seconds"]
    out["controller"]["share_of_step"] = ctrl / (ctrl + FLAGS.m * warm["seconds"] /
                                                 warm["children"])
  out["architectures"] = {"a": analysis["archs_a"], "b": analysis["archs_b"]}
  print_report(out)
  default = "benchmarks/results/child_throughput" + (
      "" if FLAGS.workload == "digits" else f"_{FLAGS.workload}") + (
      "_paper" if FLAGS.space == "paper" else "") + ".json"
  common.write_json(FLAGS.json or default, out)


def print_report(out: dict) -> None:
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


if __name__ == "__main__":
  define_flags()
  app.run(main)
