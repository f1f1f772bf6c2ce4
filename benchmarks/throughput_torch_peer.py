"""The PyTorch eager peer of ``child_throughput.py``: ``CNNChild`` as an ``nn.Module``, its
training (``trainer.fit_classifiers``' recipe) and the ``--worker=torch`` measurement process.

Imports neither JAX nor nas_jax (architectures are read from their JSON form), so that the peer's
process measures PyTorch alone; torch itself is imported where it is used, so that this module
(and ``child_throughput``, which re-exports ``torch_child`` and ``torch_param_count``) imports
without it.
"""

import math
import time
import types
from typing import NamedTuple

import throughput_workers as protocol

TORCH_PASSES = ("cold", "search", "warm")
TORCH_MISSING = "torch not installed"


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


def learning_rate_at(cfg, k: int, total: int) -> float:
  """``trainer.learning_rate``'s schedules, per update ``k`` of ``total``."""
  if cfg.lr_schedule == "constant":
    return cfg.learning_rate
  if cfg.lr_schedule == "step":
    return cfg.learning_rate * (0.1 if k >= total // 2 else 1.0) * (
        0.1 if k >= total * 3 // 4 else 1.0)
  if cfg.lr_schedule == "cosine":
    return cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * min(k, total) / total))
  raise ValueError(f"lr_schedule={cfg.lr_schedule!r}")


def torch_accuracy(model, val_x, val_y, eval_batch_size: int) -> float:
  """Validation accuracy of ``model`` (eval mode, no gradients)."""
  import torch  # pylint: disable=g-import-not-at-top
  model.eval()
  correct = 0
  with torch.no_grad():
    for s in range(0, val_x.shape[0], eval_batch_size):
      correct += int((model(val_x[s:s + eval_batch_size]).argmax(-1) ==
                      val_y[s:s + eval_batch_size]).sum())
  return correct / val_x.shape[0]


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
  step = 0
  rng = np.random.default_rng(seed)
  accs = []
  for _ in range(1, cfg.epochs + 1):
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
          group["lr"] = learning_rate_at(cfg, step, total)
      opt.step()
      step += 1
    if not np.isfinite(loss.item()):
      return {"val_accuracies": accs, "val_accuracy": 0.0, "failed": True,
              "params": torch_param_count(model)}
    accs.append(torch_accuracy(model, val_x, val_y, cfg.eval_batch_size))
  return {"val_accuracies": accs, "val_accuracy": max(accs[-cfg.reward_last_epochs:]),
          "failed": False, "params": torch_param_count(model)}


def torch_matmul_peak(device, n: int) -> float:
  """FLOP/s of a dense n x n float32 matmul on ``device`` (best of 5, after a warm-up)."""
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
  spec, arrays = protocol.load_setup(f["setup_dir"])
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
  res["peak_rss_mb"] = protocol.maxrss_mb()
  return res
