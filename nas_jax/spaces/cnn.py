"""The CNN search space of Zoph & Le (2017), Section 3.1-3.3 and 4.1.

Per layer the controller emits: filter height, filter width, [stride height, stride width],
number of filters, then the layer's anchor point (one sigmoid per previous layer: is it an input?).
Every layer is conv -> batch norm -> ReLU; inputs from several layers are concatenated on depth.

The paper's three rules that make every token sequence a valid network:
  1. a layer with no input layer takes the image;
  2. every layer output that no other layer consumes is concatenated and sent to the classifier;
  3. inputs of different spatial sizes are zero-padded (bottom/right) to the largest before
     concatenation.
The classifier (not specified in the paper) is global average pooling + a dense softmax layer.

Depth follows the paper's schedule: ``start_layers`` (6) and ``layers_increment`` (2) more every
``increment_every`` (1,600) sampled architectures, up to ``max_layers`` (0 = no cap).
The v3 variant (filters [6,12,24,36], each predicted layer a block of 3 convs, fixed max-pooling
layers) is a choice of fields: ``num_filters``, ``convs_per_layer``, ``pool_after_layers``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import ClassVar, NamedTuple, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from nas_jax.errors import ConfigError, InputError
from nas_jax.spaces import base


class Layer(NamedTuple):
  filter_height: int
  filter_width: int
  stride_height: int
  stride_width: int
  num_filters: int
  inputs: tuple[int, ...]   # indices of earlier layers; () = the image (rule 1)


class CNNArch(NamedTuple):
  layers: tuple[Layer, ...]
  convs_per_layer: int = 1
  pool_after_layers: tuple[int, ...] = ()

  def unconsumed(self) -> tuple[int, ...]:
    """Layers whose output no later layer consumes: they feed the classifier (rule 2)."""
    used = {j for layer in self.layers for j in layer.inputs}
    return tuple(i for i in range(len(self.layers)) if i not in used)


@dataclasses.dataclass(frozen=True)
class CNNSpace(base.SearchSpace):
  """The CNN search space; every field is a config field (``config.search_space``)."""
  filter_heights: tuple[int, ...] = (1, 3, 5, 7)
  filter_widths: tuple[int, ...] = (1, 3, 5, 7)
  num_filters: tuple[int, ...] = (24, 36, 48, 64)
  strides: tuple[int, ...] = (1, 2, 3)
  predict_strides: bool = False
  skip_connections: bool = True
  start_layers: int = 6
  layers_increment: int = 2
  increment_every: int = 1600
  max_layers: int = 0
  convs_per_layer: int = 1
  pool_after_layers: tuple[int, ...] = ()
  name: str = "cnn"
  data_names: ClassVar[tuple[str, ...]] = ("cifar10", "digits")

  @property
  def decisions(self) -> tuple[base.Decision, ...]:
    d = [base.Decision("filter_height", len(self.filter_heights)),
         base.Decision("filter_width", len(self.filter_widths))]
    if self.predict_strides:
      d += [base.Decision("stride_height", len(self.strides)),
            base.Decision("stride_width", len(self.strides))]
    d.append(base.Decision("num_filters", len(self.num_filters)))
    return tuple(d)

  def num_layers(self, num_sampled: int) -> int:
    n = self.start_layers + self.layers_increment * (num_sampled // self.increment_every)
    return min(n, self.max_layers) if self.max_layers else n

  def plan(self, num_layers: int) -> tuple[base.Step, ...]:
    steps = []
    for i in range(num_layers):
      steps += [base.choice(d) for d in range(len(self.decisions))]
      if self.skip_connections:
        steps.append(base.anchor(i))
    return tuple(steps)

  def decode(self, plan: Sequence[base.Step], tokens_T) -> CNNArch:
    values = base.split_tokens(plan, tokens_T)
    per_layer = len(self.decisions) + int(self.skip_connections)
    layers = []
    for i in range(0, len(values), per_layer):
      v = values[i:i + per_layer]
      fh, fw = self.filter_heights[v[0]], self.filter_widths[v[1]]
      sh, sw = (self.strides[v[2]], self.strides[v[3]]) if self.predict_strides else (1, 1)
      nf = self.num_filters[v[len(self.decisions) - 1]]
      idx = len(layers)
      if self.skip_connections:
        inputs = tuple(j for j, b in enumerate(v[-1]) if b)
      else:
        inputs = (idx - 1,) if idx else ()
      layers.append(Layer(fh, fw, sh, sw, nf, inputs))
    return CNNArch(tuple(layers), self.convs_per_layer, tuple(self.pool_after_layers))

  def build(self, arch: CNNArch, num_classes: int) -> nn.Module:
    return CNNChild(arch=arch, num_classes=num_classes)

  def check_config(self, config) -> None:
    """The depth cap and pooling layers fit; the ``vmap`` executor's one shape and odd filters."""
    executor = config.child.executor
    start, cap = self.start_layers, self.max_layers
    if cap and cap < start:
      raise ConfigError(f"config.search_space.max_layers: {cap} is below start_layers ({start}); "
                        "raise it or set 0 for no cap")
    bad = [i for i in self.pool_after_layers if i < 0 or (cap and i >= cap)]
    if bad:
      raise ConfigError(f"config.search_space.pool_after_layers: layer indices {bad} are outside "
                        f"the network (0..{(cap or start) - 1})")
    if executor == "vmap" and self.predict_strides:
      raise ConfigError("config.child.executor: 'vmap' trains children of one shape; with "
                        "search_space.predict_strides=True use child.executor='exact'")
    for name in ("filter_heights", "filter_widths"):
      even = [k for k in getattr(self, name) if k % 2 == 0]
      if executor == "vmap" and even:
        raise ConfigError(f"config.search_space.{name}: the 'vmap' executor centres each filter "
                          f"in the largest one and needs odd sizes, got {even}; use odd sizes or "
                          "child.executor='exact'")

  def describe(self, arch: CNNArch) -> str:
    parts = []
    for i, l in enumerate(arch.layers):
      src = ",".join(map(str, l.inputs)) if l.inputs else "img"
      stride = f"/s{l.stride_height}x{l.stride_width}" if (l.stride_height, l.stride_width) != (1, 1) else ""
      pool = "+pool" if i in arch.pool_after_layers else ""
      parts.append(f"{i}:{l.filter_height}x{l.filter_width}x{l.num_filters}{stride}{pool}<{src}")
    return " ".join(parts)

  def from_json(self, obj) -> CNNArch:
    """The inverse of ``base.to_json`` (:func:`arch_from_json`)."""
    return arch_from_json(obj)

  def diagram(self, arch: CNNArch, title: str = ""):
    """The diagram of :func:`nas_jax.spaces.cnn_diagram.draw` (a matplotlib Figure)."""
    from nas_jax.spaces import cnn_diagram  # pylint: disable=import-outside-toplevel
    return cnn_diagram.draw(arch, title)


def arch_from_json(obj) -> CNNArch:
  """The inverse of ``base.to_json`` for a CNNArch; also takes a history row (its ``arch``)."""
  if isinstance(obj, dict) and "arch" in obj:
    obj = obj["arch"]
  try:
    layers = tuple(Layer(**{**l, "inputs": tuple(l["inputs"])}) for l in obj["layers"])
    return CNNArch(layers, int(obj.get("convs_per_layer", 1)),
                   tuple(obj.get("pool_after_layers", ())))
  except (KeyError, TypeError) as e:
    raise ValueError(f"not a CNN architecture in the history's JSON form ({e!r}): {obj!r:.200}") from None


def concat_padded(xs: Sequence[jnp.ndarray]) -> jnp.ndarray:
  """Concatenates NHWC tensors on depth, zero-padding smaller ones bottom/right (rule 3)."""
  if len(xs) == 1:
    return xs[0]
  h = max(x.shape[1] for x in xs)
  w = max(x.shape[2] for x in xs)
  padded = [jnp.pad(x, ((0, 0), (0, h - x.shape[1]), (0, w - x.shape[2]), (0, 0))) for x in xs]
  return jnp.concatenate(padded, axis=-1)


class CNNChild(nn.Module):
  """A child network built from a decoded :class:`CNNArch`."""
  arch: CNNArch
  num_classes: int
  # Flax's default initialisers only: the exact executor draws them on the host (child.host_init).
  default_initializers: ClassVar[bool] = True

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False):
    outputs = []
    for i, layer in enumerate(self.arch.layers):
      h = concat_padded([outputs[j] for j in layer.inputs] if layer.inputs else [x_BxHxWxC])
      for c in range(self.arch.convs_per_layer):
        strides = (layer.stride_height, layer.stride_width) if c == 0 else (1, 1)
        h = nn.Conv(layer.num_filters, (layer.filter_height, layer.filter_width), strides,
                    padding="SAME", use_bias=False)(h)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
        h = nn.relu(h)
      if i in self.arch.pool_after_layers:
        h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="SAME")
      outputs.append(h)
    h = concat_padded([outputs[i] for i in self.arch.unconsumed()])
    h = jnp.mean(h, axis=(1, 2))
    return nn.Dense(self.num_classes)(h)


# ----------------------------------------------------------------------------------------------
# Architectures typed as text (``nas-jax train-child --arch``)

MAX_ARCH_LAYERS = 256   # an --arch deeper than this is refused before anything compiles
ARCH_FORMATS = ("the JSON of an architecture as history rows store it (their 'arch'), a JSON "
                "list of tokens, or a description like '0:3x3x16<img 1:5x5x32<0'")
_LAYER = re.compile(r"^(\d+):(\d+)x(\d+)x(\d+)(?:/s(\d+)x(\d+))?(\+pool)?<(img|\d+(?:,\d+)*)$")


def _from_description(text: str, space: CNNSpace) -> CNNArch:
  """``CNNSpace.describe``'s form (``0:7x7x32<img 1:7x3x24<0``) -> the architecture."""
  layers, pools = [], []
  for i, part in enumerate(text.split()):
    m = _LAYER.match(part)
    if not m:
      raise ValueError(f"layer {part!r} is not 'INDEX:FHxFWxN<INPUTS' (INPUTS 'img' or "
                       "'0,1'; optional '/sSHxSW' strides and '+pool' after N)")
    if int(m[1]) != i:
      raise ValueError(f"layer {part!r} is numbered {m[1]}, expected {i}")
    inputs = () if m[8] == "img" else tuple(int(j) for j in m[8].split(","))
    layers.append(Layer(int(m[2]), int(m[3]), int(m[5] or 1), int(m[6] or 1), int(m[4]),
                            inputs))
    if m[7]:
      pools.append(i)
  if not layers:
    raise ValueError("no layers")
  return CNNArch(tuple(layers), space.convs_per_layer, tuple(pools))


def tokens_of(space: CNNSpace, arch: CNNArch) -> list[int]:
  """The tokens that :meth:`CNNSpace.decode` turns into ``arch`` (its inverse).

  Raises:
    ValueError: ``arch`` is not an architecture of ``space`` (a value not among its choices, a
      stride it does not predict, an input that is not an earlier layer, other pooling).
  """
  def index(choices, value, what, i):
    if value not in choices:
      raise ValueError(f"layer {i}: {what} {value} is not one of the space's {list(choices)}")
    return choices.index(value)

  tokens = []
  for i, l in enumerate(arch.layers):
    tokens += [index(space.filter_heights, l.filter_height, "filter height", i),
               index(space.filter_widths, l.filter_width, "filter width", i)]
    if space.predict_strides:
      tokens += [index(space.strides, l.stride_height, "stride height", i),
                 index(space.strides, l.stride_width, "stride width", i)]
    tokens.append(index(space.num_filters, l.num_filters, "number of filters", i))
    if space.skip_connections:
      if any(not 0 <= j < i for j in l.inputs):
        raise ValueError(f"layer {i}: inputs {list(l.inputs)} must be earlier layers (0..{i - 1})")
      tokens += [int(j in l.inputs) for j in range(i)]
  decoded = space.decode(space.plan(len(arch.layers)), np.asarray(tokens, np.int32))
  if decoded != arch:
    raise ValueError(f"it is not an architecture of the space ({space.describe(arch)!r} would be "
                     f"{space.describe(decoded)!r}: strides, inputs, pooling or convs per layer "
                     "differ)")
  return tokens


def parse_arch(text: str, space: CNNSpace) -> tuple[CNNArch, list[int]]:
  """An architecture typed on the command line, and its tokens.

  ``text`` is one of: the JSON of an architecture as history rows store it (``{"layers": [...]}``;
  a whole history row also works), a JSON list of tokens (``space.decode``d; the depth follows
  from the length), or :meth:`CNNSpace.describe`'s one-line form, ``0:7x7x32<img 1:7x3x24<0``
  (``FHxFWxN``, optional ``/sSHxSW`` strides and ``+pool``, inputs ``img`` or ``0,1``).

  Raises:
    InputError: ``text`` is none of these, or not an architecture of ``space``.
  """
  text = text.strip()
  try:
    if text.startswith("["):
      tokens = [int(t) for t in json.loads(text)]
      depth = next((n for n in range(1, 257) if base.num_tokens(space.plan(n)) == len(tokens)),
                   None)
      if depth is None:
        raise ValueError(f"{len(tokens)} tokens are no whole number of layers of the space")
      try:
        arch = space.decode(space.plan(depth), np.asarray(tokens, np.int32))
        ok = tokens_of(space, arch) == tokens  # not for a negative token or an anchor bit of 2
      except IndexError:
        ok = False
      if not ok:
        raise ValueError("a token is outside its decision's choices")
    else:
      arch = space.from_json(json.loads(text)) if text.startswith("{") else \
          _from_description(text, space)
    if not arch.layers:
      raise ValueError("no layers")
    if len(arch.layers) > MAX_ARCH_LAYERS:
      raise ValueError(f"{len(arch.layers)} layers; at most {MAX_ARCH_LAYERS} (each is compiled)")
    return arch, tokens_of(space, arch)
  except RecursionError:
    raise InputError(f"--arch {text[:80]!r}: nested too deep to be an architecture; give "
                     f"{ARCH_FORMATS}") from None
  except (ValueError, TypeError) as e:
    raise InputError(f"--arch {text[:80]!r}: {e}; give {ARCH_FORMATS}") from None
