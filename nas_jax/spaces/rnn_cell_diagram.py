"""The diagram of a recurrent cell (:meth:`nas_jax.spaces.rnn_cell.RNNCellSpace.diagram`).

The cell's binary tree with its inputs x_t and h_(t-1) below, the cell inject and c_t beside their
nodes and h_t on top. matplotlib is imported here only, so importing the space stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from nas_jax.spaces import _drawing

if TYPE_CHECKING:  # annotations only: rnn_cell imports this module lazily (its diagram method)
  from nas_jax.spaces import rnn_cell

CAPTION = ("Leaf i combines W_i x_t and U_i h_(t-1) + b_i; each node is "
           "activation(combination(left, right)); the inject replaces its node's output by "
           "inject(output, c_(t-1)); c_t is the pre-activation of its node; h_t is the root's "
           "output.")
"""How to read the diagram (drawn under it)."""

_ACT_COLORS = {"identity": "#f2f2f2", "tanh": "#cfe2f3", "sigmoid": "#d9ead3", "relu": "#fce5cd",
               "sin": "#e6d7f0"}


def draw(arch: rnn_cell.CellArch, title: str = "", *, caption: bool = True) -> Figure:
  """A diagram of a recurrent cell: its tree, leaves at the bottom and the root (-> h_t) on top.

  Under the leaves run two input lines, x_t and h_(t-1); leaf i combines W_i x_t (left input) and
  U_i h_(t-1) + b_i (right input). The cell inject is a box on the edge above its node (the node's
  output replaced by inject(output, c_(t-1)) is what the parent sees), with c_(t-1) beside it;
  ``c_t`` (the pre-activation of its node) is a box beside that node. A box's color is its
  activation.

  Args:
    arch: the cell.
    title: a line on top ("": none).
    caption: draw :data:`CAPTION` (how to read the diagram) under it.

  Returns:
    The figure (:data:`nas_jax.spaces._drawing.DPI` dots per inch).
  """
  b = arch.base
  n = len(arch.nodes)
  levels, start = [], 0  # (first node, node count) of each level, leaves first
  while len(levels) < b.bit_length():
    levels.append((start, b >> len(levels)))
    start += levels[-1][1]
  level_of = {}
  for li, (start, count) in enumerate(levels):
    for j in range(count):
      level_of[start + j] = (li, j)
  root = n - 1

  def children(node):
    li, j = level_of[node]
    if li == 0:
      return ()
    start = levels[li - 1][0]
    return (start + 2 * j, start + 2 * j + 1)

  def parent(node):
    li, j = level_of[node]
    return levels[li + 1][0] + j // 2 if li + 1 < len(levels) else None

  def outward(node):  # -1 left, +1 right
    li, j = level_of[node]
    return -1 if node == root or j % 2 == 0 else 1

  w, h = 1.7, 0.82
  side_w = 1.15
  # Leaf x positions: spacing s, with room beside a leaf that has c_t or c_(t-1) beside it.
  s = 2.3
  roomy = {arch.c_node, arch.inject_node}
  xs = {}
  x = 0.0
  for j in range(b):
    if j and j in roomy and outward(j) == -1:
      x += side_w + 0.7
    xs[j] = x
    x += s
    if j in roomy and outward(j) == 1:
      x += side_w + 0.7
  for start, count in levels[1:]:
    for j in range(count):
      node = start + j
      l, r = children(node)
      xs[node] = (xs[l] + xs[r]) / 2
  dy = 2.6
  ys = {node: level_of[node][0] * dy for node in range(n)}
  inj = arch.inject_node
  has_inject = 0 <= inj < n
  has_c = 0 <= arch.c_node < n
  y_h = ys[root] + dy * (1.0 if not (has_inject and inj == root) else 1.25)
  side_gap = 0.75
  side = lambda node: xs[node] + outward(node) * (w / 2 + side_gap + side_w / 2)  # x of a side box
  y_inj = None
  if has_inject:
    y_inj = ys[inj] + h / 2 + 0.8 if inj != root else (ys[root] + y_h) / 2

  xs_all = [xs[j] for j in range(n)]
  x_lo = min(xs_all) - w / 2 - 1.4  # room for the x_t / h_(t-1) labels
  x_hi = max(xs_all) + w / 2 + 0.5
  for node, on in ((inj, has_inject), (arch.c_node, has_c)):
    if on:
      x_lo = min(x_lo, side(node) - side_w / 2 - 0.2)
      x_hi = max(x_hi, side(node) + side_w / 2 + 0.2)
  bus_x, bus_h = -1.05, -1.55  # y of the x_t and h_(t-1) lines
  y_lo, y_hi = bus_h - 0.35, y_h + h / 2 + 0.2
  scale = 0.62  # inches per data unit
  fig, ax = _drawing.framed((x_hi - x_lo) * scale, (y_hi - y_lo) * scale, title,
                            CAPTION if caption else "", title_in=0.45 if title else 0.15,
                            title_pad_in=0.08)
  ax.set_xlim(x_lo, x_hi)
  ax.set_ylim(y_lo, y_hi)

  # Input lines and the leaves' inputs.
  x_col, h_col = "tab:blue", "tab:purple"
  line_lo, line_hi = min(xs[j] for j in range(b)) - 0.9, max(xs[j] for j in range(b)) + 0.9
  ax.plot([line_lo, line_hi], [bus_x, bus_x], color=x_col, lw=2, zorder=1)
  ax.plot([line_lo, line_hi], [bus_h, bus_h], color=h_col, lw=2, zorder=1)
  ax.text(line_lo - 0.12, bus_x, r"$x_t$", ha="right", va="center", fontsize=11, color=x_col)
  ax.text(line_lo - 0.12, bus_h, r"$h_{t-1}$", ha="right", va="center", fontsize=11, color=h_col)
  for j in range(b):
    bottom = ys[j] - h / 2
    _drawing.arrow(ax, (xs[j] - 0.4, bus_x), (xs[j] - 0.4, bottom), x_col, lw=1.0, head=7)
    _drawing.arrow(ax, (xs[j] + 0.4, bus_h), (xs[j] + 0.4, bottom), h_col, lw=1.0, head=7)

  # Tree edges (child -> parent, or child -> inject -> parent).
  for node in range(n):
    p = parent(node)
    top = (xs[node], ys[node] + h / 2)
    target = (xs[p], ys[p] - h / 2) if p is not None else (xs[root], y_h - h / 2)
    if has_inject and node == inj:
      _drawing.arrow(ax, top, (xs[node], y_inj - 0.36), "black")
      _drawing.arrow(ax, (xs[node], y_inj + 0.36), target, "black")
    else:
      _drawing.arrow(ax, top, target, "black")

  for node, op in enumerate(arch.nodes):
    kind = "leaf" if level_of[node][0] == 0 else ("root" if node == root else "node")
    _drawing.box(ax, xs[node], ys[node], w, h, f"{node}: {op.combination}\n{op.activation}",
                 fc=_ACT_COLORS.get(op.activation, "white"), fontsize=9,
                 lw=2.0 if kind == "root" else 1.0)
  _drawing.box(ax, xs[root], y_h, 1.2, 0.62, r"$h_t$", fc="#eeeeee", fontsize=11)

  if has_inject:
    d, cx = outward(inj), side(inj)
    _drawing.box(ax, xs[inj], y_inj, w, 0.72,
                 f"inject: {arch.inject.combination}\n{arch.inject.activation}",
                 fc="#fff2cc", ec="darkorange", fontsize=8.5, lw=1.5)
    _drawing.box(ax, cx, y_inj, side_w, 0.58, r"$c_{t-1}$", fc="#eeeeee", fontsize=10)
    _drawing.arrow(ax, (cx - d * side_w / 2, y_inj), (xs[inj] + d * w / 2, y_inj), "darkorange",
                   lw=1.3)
  if has_c:
    # Beside its node, at its height: leaves got the room in their spacing, higher levels have it.
    c = arch.c_node
    d, cx, cy = outward(c), side(c), ys[c]
    _drawing.box(ax, cx, cy, side_w, 0.58, r"$c_t$", fc="#eeeeee", fontsize=10)
    _drawing.arrow(ax, (xs[c] + d * w / 2, cy), (cx - d * side_w / 2, cy), "darkred", lw=1.3,
                   ls="--")
    ax.text((xs[c] + d * w / 2 + cx - d * side_w / 2) / 2, cy + 0.06, "pre-act.", fontsize=7,
            ha="center", va="bottom", color="darkred")
  return fig
