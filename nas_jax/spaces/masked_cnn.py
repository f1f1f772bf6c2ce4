"""The m CNN children of a controller step as one masked max-size network, to vmap over.

The ``exact`` executor (``nas_jax.training.child``) compiles one program per distinct architecture.
Here every child of a given depth L is the same max-size network with masks (:class:`MaskedArch`),
and ``nas_jax.training.masked_children`` trains m of them vmapped:

* layer i's conv kernel is (KH, KW, C_img + i*F, F) with KH, KW the largest filter sizes and F the
  largest filter count; its input is the depth-concatenation of [image, out_0, ..., out_{i-1}]
  (every output padded to F channels, inactive channels exactly 0); without skip connections the
  only possible source is out_{i-1} (the image for layer 0) and the kernel is (KH, KW, F, F);
* the kernel is multiplied in the forward pass by (centred fh x fw window) x (input channels of
  the connected sources: the connection matrix enters here) x (the first num_filters output
  channels). Filter sizes must be odd, so a centred window with padding SAME computes exactly the
  exact child's conv. Later convs of a layer (``convs_per_layer``) are F -> F, masked alike;
* BatchNorm then ReLU, then the output is multiplied by the channel mask: the per-channel batch
  statistics of the active channels are those of the exact child;
* the classifier averages the outputs of the layers no later layer consumes (rule 2) and applies
  a Dense layer whose input rows for inactive channels / consumed layers are masked.

Masked parameters are initialised to exactly 0 and the forward pass multiplies by the mask, so
their gradients, weight decay and momentum are 0 and they stay exactly 0 for the whole training.
Active entries are initialised like the exact child's (LeCun normal with its fan-in), and
:meth:`MaskedCNN.embed_exact_variables` places an exact child's variables into the masked network,
which then computes the same logits.

Fixed pooling layers (``pool_after_layers``, rule 3) give children of the same depth outputs of
different sizes when a layer only reads pooled layers. Each layer is computed on a fixed canvas
(the largest size it could have); the valid top-left region of a child is tracked in
``conv_sizes``/``out_sizes``: values outside it are zeroed and BatchNorm averages over it only, so
zero canvas padding plays the role of the exact child's bottom/right zero padding.

The children are vmapped. On CPU a vmapped conv with per-child weights lowers to a grouped
convolution, measured ~5.6x slower than m separate convs (8 three-layer digits children, 7x7
kernels, 32 filters, batch 128: 5.6 s vs 1.0 s per training step on the 2-core machine).
``conv_batching="unrolled"`` (default) therefore gives the conv a vmap rule that emits the m convs
one after another in the same program; ``"grouped"`` keeps JAX's default rule.

Strides (``predict_strides``) change shapes per child and are not supported: use the exact
executor. Every child computes max-size convs, so a step costs the FLOPs of m max-size children
(on the digits space ~5x slower than the same children compiled at their exact shapes, on CPU);
what it saves is compilation: one program per depth (and m) for the whole search.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nas_jax.spaces.cnn import CNNArch, CNNSpace

_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5                  # flax nn.BatchNorm's default
_TRUNCATED_NORMAL_STD = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]
CONV_BATCHINGS = ("unrolled", "grouped")


class MaskedArch(NamedTuple):
  """A decoded CNN child as fixed-shape arrays (numpy; stacked on a leading axis for m children).

  L = depth, KH/KW = largest filter height/width, F = largest filter count.
  """
  kernel_masks: np.ndarray     # L x KH x KW float: the centred fh x fw window
  channel_masks: np.ndarray    # L x F float: the first num_filters channels
  connections: np.ndarray      # L x (L+1) float: [i, 0] the image, [i, j+1] layer j's output
  classifier_mask: np.ndarray  # L float: layers no later layer consumes (rule 2)
  conv_sizes: np.ndarray       # L x 2 int32: valid (height, width) of layer i's conv outputs
  out_sizes: np.ndarray        # L x 2 int32: valid (height, width) of layer i's output (pooled)


def stack_archs(marcs: Sequence[MaskedArch]) -> MaskedArch:
  """m MaskedArchs -> one MaskedArch with a leading axis m (the vmapped axis)."""
  return MaskedArch(*(np.stack(f) for f in zip(*marcs)))


def _conv_same(x_BxHxWxC, kernel):
  return lax.conv_general_dilated(x_BxHxWxC, kernel, (1, 1), "SAME",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _unrolled_vmap(fn):
  """``fn`` whose vmap rule calls it once per batch element (no grouped convolution)."""
  f = jax.custom_batching.custom_vmap(fn)

  @f.def_vmap
  def rule(axis_size, in_batched, *args):
    args = [a if b else jnp.broadcast_to(a, (axis_size,) + a.shape)
            for a, b in zip(args, in_batched)]
    outs = [fn(*(a[k] for a in args)) for k in range(axis_size)]
    out = jax.tree.map(lambda *o: jnp.stack(o), *outs)
    return out, jax.tree.map(lambda _: True, out)
  return f


_conv_fwd = _unrolled_vmap(_conv_same)
_conv_bwd = _unrolled_vmap(lambda x, k, g: jax.vjp(_conv_same, x, k)[1](g))


@jax.custom_vjp
def _conv_unrolled(x_BxHxWxC, kernel):
  return _conv_fwd(x_BxHxWxC, kernel)


_conv_unrolled.defvjp(lambda x, k: (_conv_fwd(x, k), (x, k)),
                      lambda res, g: tuple(_conv_bwd(*res, g)))


def _pooled(size: int) -> int:
  return (size + 1) // 2  # max pool 2x2, stride 2, padding SAME


def _batch_norm(x_BxHxWxF, scale, bias, stats, train: bool, valid_HxW=None, count=None):
  """flax nn.BatchNorm (fast variance), with batch statistics over the valid region only."""
  if train:
    if valid_HxW is None:
      mean = jnp.mean(x_BxHxWxF, axis=(0, 1, 2))
      mean2 = jnp.mean(jnp.square(x_BxHxWxF), axis=(0, 1, 2))
    else:
      xv = x_BxHxWxF * valid_HxW[None, :, :, None]
      mean = jnp.sum(xv, axis=(0, 1, 2)) / count
      mean2 = jnp.sum(xv * x_BxHxWxF, axis=(0, 1, 2)) / count
    var = jnp.maximum(0.0, mean2 - jnp.square(mean))
    stats = {"mean": _BN_MOMENTUM * stats["mean"] + (1 - _BN_MOMENTUM) * mean,
             "var": _BN_MOMENTUM * stats["var"] + (1 - _BN_MOMENTUM) * var}
  else:
    mean, var = stats["mean"], stats["var"]
  mul = lax.rsqrt(var + _BN_EPSILON) * scale
  return (x_BxHxWxF - mean) * mul + bias, stats


def _lecun_normal(key, mask):
  """LeCun normal (flax's default kernel init) with each output column's fan-in = its active
  inputs; masked entries are exactly 0."""
  fan_in = jnp.sum(mask, axis=tuple(range(mask.ndim - 1)))
  std = jnp.sqrt(1.0 / jnp.maximum(fan_in, 1.0)) / _TRUNCATED_NORMAL_STD
  return jax.random.truncated_normal(key, -2.0, 2.0, mask.shape) * std * mask


def exact_param_count(arch: CNNArch, image_channels: int, num_classes: int) -> int:
  """Parameter count of the exact child ``CNNChild(arch, num_classes)``."""
  total = 0
  for layer in arch.layers:
    nf, window = layer.num_filters, layer.filter_height * layer.filter_width
    cin = sum(arch.layers[j].num_filters for j in layer.inputs) if layer.inputs else image_channels
    total += window * cin * nf + (arch.convs_per_layer - 1) * window * nf * nf
    total += arch.convs_per_layer * 2 * nf   # BatchNorm scale and bias
  features = sum(arch.layers[i].num_filters for i in arch.unconsumed())
  return total + features * num_classes + num_classes


class _Geometry(NamedTuple):
  sources: tuple[tuple[int, ...], ...]   # per layer: columns it may read (0 = image)
  in_canvas: tuple[tuple[int, int], ...]
  out_canvas: tuple[tuple[int, int], ...]
  pools: frozenset
  spatial_masks: bool                    # some child may have a layer smaller than its canvas


@dataclasses.dataclass(frozen=True)
class MaskedCNN:
  """The masked max-size network of ``num_layers`` layers of ``space`` (hashable, static).

  Variables are dict pytrees named like the exact ``CNNChild``'s (``Conv_k``, ``BatchNorm_k``
  with k = layer * convs_per_layer + conv, ``Dense_0``) at max-size shapes.
  """
  space: CNNSpace
  num_layers: int
  image_shape: tuple[int, int, int]   # H, W, C
  num_classes: int
  conv_batching: str = "unrolled"

  def __post_init__(self):
    s = self.space
    if s.predict_strides:
      raise ValueError("search_space.predict_strides=True gives children of different spatial "
                       "shapes, which the masked (vmap) executor cannot batch: use "
                       "child.executor=exact")
    for name in ("filter_heights", "filter_widths"):
      sizes = getattr(s, name)
      if any(k % 2 == 0 for k in sizes):
        raise ValueError(f"search_space.{name}={tuple(sizes)}: the masked (vmap) executor needs "
                         "odd filter sizes (a centred window of an even filter is not the exact "
                         "SAME conv): use child.executor=exact")
    if self.num_layers < 1:
      raise ValueError(f"num_layers={self.num_layers} must be >= 1")
    if self.conv_batching not in CONV_BATCHINGS:
      raise ValueError(f"conv_batching={self.conv_batching!r}; allowed: {CONV_BATCHINGS}")

  @property
  def max_kernel(self) -> tuple[int, int]:
    return max(self.space.filter_heights), max(self.space.filter_widths)

  @property
  def max_filters(self) -> int:
    return max(self.space.num_filters)

  @functools.cached_property
  def _geometry(self) -> _Geometry:
    h, w, _ = self.image_shape
    pools = frozenset(p for p in self.space.pool_after_layers if 0 <= p < self.num_layers)
    canvas = [(h, w)]   # per column: 0 = the image, j + 1 = layer j
    sources, in_canvas, out_canvas = [], [], []
    for i in range(self.num_layers):
      src = tuple(range(i + 1)) if self.space.skip_connections else (i,)
      c_in = (max(canvas[s][0] for s in src), max(canvas[s][1] for s in src))
      c_out = (_pooled(c_in[0]), _pooled(c_in[1])) if i in pools else c_in
      sources.append(src)
      in_canvas.append(c_in)
      out_canvas.append(c_out)
      canvas.append(c_out)
    spatial = self.space.skip_connections and any(p < self.num_layers - 1 for p in pools)
    return _Geometry(tuple(sources), tuple(in_canvas), tuple(out_canvas), pools, spatial)

  def encode(self, arch: CNNArch) -> MaskedArch:
    """The masks of ``arch``; ValueError if it does not fit this network."""
    L, F = self.num_layers, self.max_filters
    KH, KW = self.max_kernel
    g = self._geometry
    if len(arch.layers) != L:
      raise ValueError(f"arch has {len(arch.layers)} layers, the masked network {L}")
    if arch.convs_per_layer != self.space.convs_per_layer:
      raise ValueError(f"arch.convs_per_layer={arch.convs_per_layer} differs from "
                       f"search_space.convs_per_layer={self.space.convs_per_layer}")
    if frozenset(p for p in arch.pool_after_layers if 0 <= p < L) != g.pools:
      raise ValueError(f"arch.pool_after_layers={arch.pool_after_layers} differs from "
                       f"search_space.pool_after_layers={self.space.pool_after_layers}")
    kernel = np.zeros((L, KH, KW), np.float32)
    channels = np.zeros((L, F), np.float32)
    conn = np.zeros((L, L + 1), np.float32)
    conv_sizes = np.zeros((L, 2), np.int32)
    out_sizes = np.zeros((L, 2), np.int32)
    sizes = [self.image_shape[:2]]
    for i, layer in enumerate(arch.layers):
      fh, fw, nf = layer.filter_height, layer.filter_width, layer.num_filters
      if (layer.stride_height, layer.stride_width) != (1, 1):
        raise ValueError(f"layer {i} has strides {layer.stride_height}x{layer.stride_width}: the "
                         "masked (vmap) executor needs stride 1; use child.executor=exact")
      if fh % 2 == 0 or fw % 2 == 0 or fh > KH or fw > KW or not 1 <= nf <= F:
        raise ValueError(f"layer {i} ({fh}x{fw}x{nf}) does not fit the masked network "
                         f"(odd filters up to {KH}x{KW}, up to {F} filters)")
      cols = tuple(j + 1 for j in layer.inputs) if layer.inputs else (0,)
      if len(set(cols)) != len(cols) or not set(cols) <= set(g.sources[i]):
        raise ValueError(f"layer {i} inputs {layer.inputs} are not distinct earlier layers "
                         "allowed by the search space")
      kernel[i, (KH - fh) // 2:(KH + fh) // 2, (KW - fw) // 2:(KW + fw) // 2] = 1.0
      channels[i, :nf] = 1.0
      conn[i, list(cols)] = 1.0
      conv_sizes[i] = (max(sizes[c][0] for c in cols), max(sizes[c][1] for c in cols))
      out_sizes[i] = ([_pooled(int(s)) for s in conv_sizes[i]] if i in g.pools
                      else conv_sizes[i])
      sizes.append(tuple(int(s) for s in out_sizes[i]))
    classifier = np.zeros((L,), np.float32)
    classifier[list(arch.unconsumed())] = 1.0
    return MaskedArch(kernel, channels, conn, classifier, conv_sizes, out_sizes)

  def param_masks(self, marc: MaskedArch) -> dict:
    """A pytree like the params: 1 where the exact child has a parameter, else 0."""
    c_img, convs = self.image_shape[2], self.space.convs_per_layer
    masks = {}
    for i in range(self.num_layers):
      window = marc.kernel_masks[i][:, :, None, None]
      out = marc.channel_masks[i]
      in_mask = jnp.concatenate([
          marc.connections[i, s] * (jnp.ones((c_img,)) if s == 0 else marc.channel_masks[s - 1])
          for s in self._geometry.sources[i]])
      for c in range(convs):
        k = i * convs + c
        cin = in_mask if c == 0 else out
        masks[f"Conv_{k}"] = {"kernel": window * cin[None, None, :, None] * out}
        masks[f"BatchNorm_{k}"] = {"scale": out, "bias": out}
    rows = (marc.classifier_mask[:, None] * marc.channel_masks).reshape(-1)
    masks["Dense_0"] = {
        "kernel": jnp.broadcast_to(rows[:, None], (rows.shape[0], self.num_classes)),
        "bias": jnp.ones((self.num_classes,))}
    return masks

  def init(self, key: jax.Array, marc: MaskedArch) -> tuple[dict, dict]:
    """(params, batch_stats) of one child, distributed like the exact child's initialisation."""
    masks = self.param_masks(marc)
    params, stats = {}, {}
    for n, (name, m) in enumerate(sorted(masks.items())):
      if name.startswith("BatchNorm"):
        params[name] = {"scale": m["scale"], "bias": jnp.zeros_like(m["bias"])}
        stats[name] = {"mean": jnp.zeros_like(m["bias"]), "var": jnp.ones_like(m["bias"])}
      else:
        params[name] = {"kernel": _lecun_normal(jax.random.fold_in(key, n), m["kernel"])}
        if "bias" in m:
          params[name]["bias"] = jnp.zeros_like(m["bias"])
    return params, stats

  def apply(self, params: dict, batch_stats: dict, marc: MaskedArch, x_BxHxWxC: jax.Array,
            train: bool = False) -> tuple[jax.Array, dict]:
    """Logits_BxK of one child and its batch_stats (updated from batch statistics if ``train``)."""
    g = self._geometry
    p = jax.tree.map(jnp.multiply, params, self.param_masks(marc))
    conv = _conv_unrolled if self.conv_batching == "unrolled" else _conv_same
    batch = x_BxHxWxC.shape[0]
    convs = self.space.convs_per_layer
    new_stats = {}
    columns = [x_BxHxWxC]
    for i in range(self.num_layers):
      ch, cw = g.in_canvas[i]
      h = jnp.concatenate([
          jnp.pad(columns[s], ((0, 0), (0, ch - columns[s].shape[1]),
                               (0, cw - columns[s].shape[2]), (0, 0)))
          for s in g.sources[i]], axis=-1)
      valid = count = None
      if g.spatial_masks:
        vh, vw = marc.conv_sizes[i, 0], marc.conv_sizes[i, 1]
        valid = ((jnp.arange(ch)[:, None] < vh) & (jnp.arange(cw)[None, :] < vw)).astype(h.dtype)
        count = batch * vh * vw
      for c in range(convs):
        k = i * convs + c
        h = conv(h, p[f"Conv_{k}"]["kernel"])
        bn = p[f"BatchNorm_{k}"]
        h, new_stats[f"BatchNorm_{k}"] = _batch_norm(
            h, bn["scale"], bn["bias"], batch_stats[f"BatchNorm_{k}"], train, valid, count)
        h = nn.relu(h) * marc.channel_masks[i]
        if valid is not None:
          h = h * valid[None, :, :, None]
      if i in g.pools:
        # Outside the valid region h is 0 and inside it is >= 0, so the canvas pools like the
        # exact child's bottom/right -inf padding.
        h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="SAME")
      columns.append(h)
    # Rule 2/3: the mean over the unconsumed outputs zero-padded to their largest size.
    used = marc.classifier_mask > 0
    area = (jnp.max(jnp.where(used, marc.out_sizes[:, 0], 0)) *
            jnp.max(jnp.where(used, marc.out_sizes[:, 1], 0)))
    feats = jnp.concatenate([jnp.sum(o, axis=(1, 2)) for o in columns[1:]], axis=-1) / area
    logits = feats @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    return logits, new_stats

  def embed_exact_variables(self, arch: CNNArch, exact_variables: dict) -> tuple[dict, dict]:
    """(params, batch_stats) of the masked network computing what ``CNNChild(arch)`` computes.

    Args:
      arch: the exact child's architecture.
      exact_variables: ``CNNChild(arch, num_classes).init(...)`` (``params``, ``batch_stats``).

    Returns:
      Masked variables: the exact child's values in the active entries, 0 elsewhere (running
      variance 1).
    """
    marc = self.encode(arch)
    ex_p, ex_s = exact_variables["params"], exact_variables["batch_stats"]
    params, stats = jax.eval_shape(self.init, jax.random.key(0), marc)
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params)
    stats = {name: {"mean": np.zeros(s["mean"].shape, np.float32),
                    "var": np.ones(s["var"].shape, np.float32)} for name, s in stats.items()}
    KH, KW = self.max_kernel
    c_img, F, convs = self.image_shape[2], self.max_filters, self.space.convs_per_layer
    for i, layer in enumerate(arch.layers):
      fh, fw, nf = layer.filter_height, layer.filter_width, layer.num_filters
      oh, ow = (KH - fh) // 2, (KW - fw) // 2
      srcs = self._geometry.sources[i]
      starts = np.cumsum([0] + [c_img if s == 0 else F for s in srcs])
      for c in range(convs):
        k = i * convs + c
        ex = np.asarray(ex_p[f"Conv_{k}"]["kernel"])
        dst = params[f"Conv_{k}"]["kernel"]
        if c == 0:
          offset = 0
          for col in ([j + 1 for j in layer.inputs] if layer.inputs else [0]):
            n_in = c_img if col == 0 else arch.layers[col - 1].num_filters
            row = starts[srcs.index(col)]
            dst[oh:oh + fh, ow:ow + fw, row:row + n_in, :nf] = ex[:, :, offset:offset + n_in]
            offset += n_in
        else:
          dst[oh:oh + fh, ow:ow + fw, :nf, :nf] = ex
        for name in ("scale", "bias"):
          params[f"BatchNorm_{k}"][name][:nf] = ex_p[f"BatchNorm_{k}"][name]
        for name in ("mean", "var"):
          stats[f"BatchNorm_{k}"][name][:nf] = ex_s[f"BatchNorm_{k}"][name]
    ex_dense = np.asarray(ex_p["Dense_0"]["kernel"])
    offset = 0
    for l in arch.unconsumed():
      nf = arch.layers[l].num_filters
      params["Dense_0"]["kernel"][l * F:l * F + nf] = ex_dense[offset:offset + nf]
      offset += nf
    params["Dense_0"]["bias"][:] = ex_p["Dense_0"]["bias"]
    return params, stats
