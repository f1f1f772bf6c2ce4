"""The diagram of a CNN architecture (:meth:`nas_jax.spaces.cnn.CNNSpace.diagram`).

The image on top, the layers in order, the classifier at the bottom; skip connections run in lanes
beside the boxes. matplotlib is imported here only, so importing the space stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from nas_jax.spaces import _drawing

if TYPE_CHECKING:  # annotations only: cnn imports this module lazily (its diagram method)
  from nas_jax.spaces import cnn

CAPTION = ("Every layer is conv → batch norm → ReLU. A layer with several incoming arrows "
           "concatenates them on depth (smaller inputs zero-padded); a layer with none takes the "
           "image; layers that no other layer consumes feed the classifier.")
"""How to read the diagram (drawn under it)."""


def _assign_lanes(groups: list[tuple[int, int]]) -> list[int]:
  """Lane per vertical interval [lo, hi] (closed): overlapping intervals get different lanes;
  short intervals take the inner lanes (fewer crossings)."""
  order = sorted(range(len(groups)), key=lambda g: (groups[g][1] - groups[g][0], groups[g][0]))
  lanes: list[list[tuple[int, int]]] = []
  out = [0] * len(groups)
  for g in order:
    lo, hi = groups[g]
    for li, used in enumerate(lanes):
      if all(hi < a or lo > b for a, b in used):
        used.append((lo, hi))
        out[g] = li
        break
    else:
      lanes.append([(lo, hi)])
      out[g] = len(lanes) - 1
  return out


def _cnn_layer_text(i: int, layer: cnn.Layer, arch: cnn.CNNArch) -> str:
  head = f"layer {i}: {layer.filter_height}x{layer.filter_width}, {layer.num_filters} filters"
  extra = []
  if (layer.stride_height, layer.stride_width) != (1, 1):
    extra.append(f"stride {layer.stride_height}x{layer.stride_width}")
  if arch.convs_per_layer > 1:
    extra.append(f"{arch.convs_per_layer} convs")
  if i in arch.pool_after_layers:
    extra.append("then 2x2 max-pool")
  return head + ("\n" + ", ".join(extra) if extra else "")


def draw(arch: cnn.CNNArch, title: str = "", *, caption: bool = True) -> Figure:
  """A diagram of a CNN architecture.

  Image on top, layers in order, the classifier at the bottom; a straight arrow joins consecutive
  boxes, every other edge runs in a lane: skip connections between layers on the right (one lane
  per source layer, one color per source), the image's edges and the edges into the classifier on
  the left. Arrows enter a box's side in its upper half, edges leave from its lower half; a dot on
  a lane is a branch (a crossing without a dot is no connection).

  Args:
    arch: the architecture.
    title: a line on top ("": none).
    caption: draw :data:`CAPTION` (how to read the diagram) under it.

  Returns:
    The figure (:data:`nas_jax.spaces._drawing.DPI` dots per inch).
  """
  n_layers = len(arch.layers)
  texts = ["image"] + [_cnn_layer_text(i, l, arch) for i, l in enumerate(arch.layers)]
  texts.append("global average pool\n+ dense softmax")
  last = n_layers + 1  # node index of the classifier; node i + 1 is layer i, node 0 the image

  edges = []  # (src node, dst node)
  for i, layer in enumerate(arch.layers):
    edges += [(0, i + 1)] if not layer.inputs else [(j + 1, i + 1) for j in layer.inputs]
  edges += [(u + 1, last) for u in arch.unconsumed()]
  straight = [(s, d) for s, d in edges if d == s + 1]
  far = [(s, d) for s, d in edges if d > s + 1]

  # Lane groups: right: one per source layer; left: the image's fan-out and the classifier's fan-in.
  right: dict[int, list[int]] = {}
  left_img = [d for s, d in far if s == 0]
  left_cls = [s for s, d in far if d == last and s != 0]
  for s, d in far:
    if s != 0 and d != last:
      right.setdefault(s, []).append(d)
  right_groups = sorted(right)
  r_lanes = _assign_lanes([(s, max(right[s])) for s in right_groups])
  l_groups = []
  if left_img:
    l_groups.append(("img", (0, max(left_img))))
  if left_cls:
    l_groups.append(("cls", (min(left_cls), last)))
  l_lanes = _assign_lanes([g[1] for g in l_groups])

  lines = max(t.count("\n") + 1 for t in texts)
  chars = max(len(line) for t in texts for line in t.split("\n"))
  w = max(2.6, 0.075 * chars + 0.5)
  h = 0.46 + 0.2 * (lines - 1)
  arr, dep = 0.22 * h, -0.25 * h  # where arrows enter a box's side and edges leave it
  gap = h + 0.5
  lane0, lane_dx = 0.3, 0.24
  n_r = max(r_lanes, default=-1) + 1
  n_l = max(l_lanes, default=-1) + 1
  x_min = -w / 2 - lane0 - lane_dx * max(n_l - 1, 0) - 0.25
  x_max = w / 2 + lane0 + lane_dx * max(n_r - 1, 0) + 0.25
  y_of = lambda node: -node * gap
  y_min, y_max = y_of(last) - h / 2 - 0.15, h / 2 + 0.15

  spare = 0.08 * len(title) + 0.3 - (x_max - x_min)  # the title fits the width
  if spare > 0:
    x_min, x_max = x_min - spare / 2, x_max + spare / 2
  fig, ax = _drawing.framed(x_max - x_min, y_max - y_min, title, CAPTION if caption else "",
                            title_in=0.5 if title else 0.15, title_pad_in=0.12)
  ax.set_xlim(x_min, x_max)
  ax.set_ylim(y_min, y_max)

  for node, text in enumerate(texts):
    fc = "#dbe9f6" if node == 0 else ("#d9f0d3" if node == last else "#fff2cc")
    _drawing.box(ax, 0, y_of(node), w, h, text, fc=fc)
  for s, d in straight:
    _drawing.arrow(ax, (0, y_of(s) - h / 2), (0, y_of(d) + h / 2), "black")

  palette = [f"C{i}" for i in range(10) if i != 7]  # C7 (gray) is the image's
  color_of = {s: palette[gi % len(palette)] for gi, s in enumerate(right_groups)}
  lane_x = {s: w / 2 + lane0 + lane_dx * r_lanes[gi] for gi, s in enumerate(right_groups)}
  for s in right_groups:
    ends = [y_of(d) + arr for d in right[s]]
    ax.plot([w / 2, lane_x[s], lane_x[s]], [y_of(s) + dep, y_of(s) + dep, min(ends)],
            color=color_of[s], lw=1.2, zorder=2)
    # a dot where the lane branches off and goes on (a crossing without a dot is no connection)
    ax.plot([lane_x[s]] * (len(ends) - 1), sorted(ends)[1:], "o", ms=3.5, color=color_of[s],
            zorder=2.5)
  feeds: dict[int, list[int]] = {}
  for s in right_groups:
    for d in right[s]:
      feeds.setdefault(d, []).append(s)
  for d, srcs in feeds.items():  # one arrow per box: the outer lanes first, inner ones on top
    for s in sorted(srcs, key=lambda s: -lane_x[s]):
      _drawing.arrow(ax, (lane_x[s], y_of(d) + arr), (w / 2, y_of(d) + arr), color_of[s])
  for (kind, _), li in zip(l_groups, l_lanes):
    lx = -w / 2 - lane0 - lane_dx * li
    if kind == "img":
      color = "C7"
      y0 = y_of(0) + dep
      ends = [y_of(d) + arr for d in left_img]
      for ya in ends:
        _drawing.arrow(ax, (lx, ya), (-w / 2, ya), color)
      ax.plot([-w / 2, lx, lx], [y0, y0, min(ends)], color=color, lw=1.2, zorder=2)
      if len(ends) > 1:
        ax.plot([lx] * (len(ends) - 1), sorted(ends)[1:], "o", ms=3.5, color=color, zorder=2.5)
    else:
      color = "black"
      starts = [y_of(s) + dep for s in left_cls]
      ya = y_of(last) + arr
      for ys in starts:
        ax.plot([-w / 2, lx], [ys, ys], color=color, lw=1.2, zorder=2)
      ax.plot([lx, lx], [max(starts), ya], color=color, lw=1.2, zorder=2)
      _drawing.arrow(ax, (lx, ya), (-w / 2, ya), color)
      if len(starts) > 1:
        ax.plot([lx] * (len(starts) - 1), sorted(starts)[:-1], "o", ms=3.5, color=color,
                zorder=2.5)
  return fig
