"""Plots and a markdown report of a search's workdir (``experiments/report.py`` is the CLI).

* :func:`plot_rewards`: reward of every architecture in evaluation order, failed children, the
  controller's baseline (``steps.jsonl``, REINFORCE only) and a moving average;
* :func:`plot_topk` / :func:`topk_curve`: the mean of the top-k rewards among the first n
  architectures vs n, one line per searcher (Zoph & Le 2017, Fig. 6);
* :func:`draw_architecture`: a diagram of a CNN (layers, skip connections, classifier) or of a
  recurrent cell (the tree of combinations / activations, inputs, cell inject and ``c_t``);
* :func:`write_report`: ``report.md`` with the config, ``analysis.summarize``, the plots above and
  the top architectures.

The figures are :class:`matplotlib.figure.Figure` objects made without ``pyplot``: nothing global
changes (a notebook's backend stays as it is) and nothing has to be closed.
"""

from __future__ import annotations

import collections
import heapq
import json
import math
import os
from typing import Any, Sequence

import numpy as np
from matplotlib import patches
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from nas_jax import analysis
from nas_jax.search_spaces import base
from nas_jax.search_spaces import cnn as cnn_space
from nas_jax.search_spaces import rnn_cell

REPORT_FILES = ("report.md", "rewards.png", "topk.png", "best.png")
"""Every file :func:`write_report` may write (nothing else in the output folder is touched):
``topk.png`` only with a second run, ``best.png`` only for a space in ``DIAGRAM_SPACES``."""

DIAGRAM_SPACES = ("cnn", "rnn_cell")
_SPACE_CLASSES = {"cnn": "CNNSpace", "rnn_cell": "RNNCellSpace"}
"""The search spaces (``config.search_space.name``) that :func:`draw_architecture` draws."""

_DPI = 110


# ----------------------------------------------------------------------------------------------
# Reading a workdir


def load_run(workdir: str) -> dict[str, Any]:
  """``{"workdir", "rows", "steps", "config"}`` of a search workdir.

  ``rows`` are the history rows (``history.jsonl``, required), ``steps`` the controller steps
  (``steps.jsonl``; None if the file is absent: runs of older versions lack it), ``config`` the
  flat config (``config.json``; ``{}`` if absent).

  Raises:
    FileNotFoundError: ``workdir`` or its ``history.jsonl`` does not exist.
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"{workdir} is not a directory")
  rows = analysis.load_history(workdir)
  steps_path = os.path.join(workdir, "steps.jsonl")
  steps = analysis.read_history(steps_path) if os.path.exists(steps_path) else None
  config = {}
  config_path = os.path.join(workdir, "config.json")
  if os.path.exists(config_path):
    with open(config_path) as f:
      config = json.load(f)
  return {"workdir": workdir, "rows": rows, "steps": steps, "config": config}


def space_name(run: dict[str, Any]) -> str:
  """The search space's name: ``config.json``'s ``search_space.name``; "custom" for a space of the
  user's (``run_search(..., space=...)`` keeps the config's name but records the space's class);
  without a config, guessed from the architectures' JSON form (``layers``: "cnn", ``nodes``:
  "rnn_cell")."""
  name = run.get("config", {}).get("search_space.name")
  space_class = run.get("config", {}).get("search_space.class")  # the space run_search used
  if space_class and space_class != _SPACE_CLASSES.get(name):
    return "custom"
  arch = run["rows"][0].get("arch") if run.get("rows") else None
  guess = "unknown"
  if isinstance(arch, dict) and "layers" in arch:
    guess = "cnn"
  elif isinstance(arch, dict) and "nodes" in arch:
    guess = "rnn_cell"
  if name and arch is not None and name in DIAGRAM_SPACES and guess != name:
    return "custom"
  return name or guess


def _children_per_step(rows: Sequence[dict]) -> int:
  """The most common number of rows per controller step (1 if unknown)."""
  counts = collections.Counter(r.get("step", 0) for r in rows)
  return collections.Counter(counts.values()).most_common(1)[0][0] if counts else 1


# ----------------------------------------------------------------------------------------------
# Rewards and top-k


def _finite(rewards) -> np.ndarray:
  r = np.asarray(rewards, np.float64).ravel()
  return np.where(np.isfinite(r), r, 0.0)


def moving_average(values, window: int) -> np.ndarray:
  """Trailing mean over the last ``window`` values (fewer at the start); same length as input."""
  v = np.asarray(values, np.float64).ravel()
  if v.size == 0:
    return v
  window = max(1, int(window))
  c = np.concatenate([[0.0], np.cumsum(v)])
  n = np.arange(1, v.size + 1)
  lo = np.maximum(0, n - window)
  return (c[n] - c[lo]) / (n - lo)


def topk_curve(rewards, k: int) -> np.ndarray:
  """For n = 1..len(rewards): the mean of the top ``min(k, n)`` rewards among the first n.

  Non-finite rewards count as 0 (the search records a failed child with reward 0). The result has
  the length of ``rewards`` and no NaN.
  """
  if int(k) < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  k = int(k)
  r = _finite(rewards)
  out = np.empty(r.size, np.float64)
  heap: list[float] = []  # the top-k so far (a min-heap)
  for n, v in enumerate(r.tolist()):
    if len(heap) < k:
      heapq.heappush(heap, v)
    elif v > heap[0]:
      heapq.heapreplace(heap, v)
    out[n] = math.fsum(heap) / len(heap)
  return out


def plot_rewards(rows: Sequence[dict], steps: Sequence[dict] | None = None, path: str | None = None,
                 ax=None, *, window: int | None = None, title: str | None = None) -> Figure:
  """Reward of each architecture vs its index in the history (evaluation order).

  Failed children are red crosses at 0; a line shows the trailing moving average of the rewards
  (``window``: default the larger of 16 and the children per step), and, if ``steps`` (the rows of
  ``steps.jsonl``) have a ``baseline`` (REINFORCE), the baseline each controller step used, plotted
  at the index of the step's last child. A change of depth (CNN schedule) is a dotted vertical line.
  The best architecture is a star.

  Args:
    rows: history rows.
    steps: rows of ``steps.jsonl`` or None.
    path: if given, the figure is saved there (PNG).
    ax: draw into this axes instead of a new figure.

  Returns:
    The figure.
  """
  if ax is None:
    fig = Figure(figsize=(9, 4.6), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
  else:
    fig = ax.figure
  rows = list(rows)
  x = np.arange(len(rows))
  rewards = _finite([r.get("reward", 0.0) for r in rows])
  failed = np.array([bool(r.get("failed")) for r in rows], bool)
  size = 14 if len(rows) <= 300 else 7
  ax.scatter(x[~failed], rewards[~failed], s=size, color="tab:blue", alpha=0.6, linewidths=0,
             label="architecture", zorder=2)
  if failed.any():
    ax.scatter(x[failed], np.zeros(failed.sum()), s=size * 2, marker="x", color="tab:red",
               linewidths=1.0, label=f"failed ({failed.sum()})", zorder=3)
  if len(rows):
    m = _children_per_step(rows)
    window = window or max(16, m)
    ax.plot(x, moving_average(rewards, window), color="black", lw=1.6,
            label=f"moving average ({window})", zorder=4)
  if steps:
    last = {}
    for i, r in enumerate(rows):
      last[r.get("step")] = i
    pts = [(last[s["step"]], s["baseline"]) for s in steps
           if s.get("baseline") is not None and s.get("step") in last]
    if pts:
      bx, by = zip(*sorted(pts))
      ax.plot(bx, by, color="tab:orange", lw=1.6, label="controller baseline", zorder=5)
  if len(rows) and not failed.all():
    ok = np.flatnonzero(~failed)
    b = ok[np.argmax(rewards[ok])]
    ax.scatter([b], [rewards[b]], s=140, marker="*", color="gold", edgecolors="black",
               linewidths=0.8, label=f"best ({rewards[b]:.4g})", zorder=6)
  depths = [r.get("num_layers") for r in rows]
  changes = [i for i in range(1, len(depths)) if depths[i] != depths[i - 1]]
  if changes:
    trans = ax.get_xaxis_transform()
    ax.text(0, 1.005, f"{depths[0]} layers", transform=trans, fontsize=8, va="bottom",
            color="dimgray")
    for i in changes:
      ax.axvline(i - 0.5, color="gray", ls=":", lw=1, zorder=1)
      ax.text(i, 1.005, f"{depths[i]} layers", transform=trans, fontsize=8, va="bottom",
              color="dimgray")
  ax.set_xlabel("architecture (evaluation order)")
  ax.set_ylabel("reward")
  ax.set_xlim(-0.01 * max(len(rows), 1) - 0.5, len(rows) - 0.5 + 0.01 * max(len(rows), 1))
  ax.grid(alpha=0.3)
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
  ax.set_title(title or "Reward of each architecture", pad=14 if changes else 6)
  if path:
    fig.savefig(path, dpi=_DPI)
  return fig


def _run_styles(labels: Sequence[str]) -> dict[str, Any]:
  """Line style per run: random search dashed, the others solid (then dash-dot, dotted)."""
  solid = ["-", "-.", (0, (1, 1)), (0, (3, 1, 1, 1, 1, 1))]
  dashed = ["--", (0, (6, 2)), (0, (2, 2))]
  out, i, j = {}, 0, 0
  for label in labels:
    if "random" in label.lower():
      out[label] = dashed[j % len(dashed)]
      j += 1
    else:
      out[label] = solid[i % len(solid)]
      i += 1
  return out


def _style_legend(labels: Sequence[str]) -> str:
  """Which line style is which run, in words (as :func:`_run_styles` draws them)."""
  names = {"-": "solid", "--": "dashed", "-.": "dash-dot"}
  styles = _run_styles(labels)
  return ", ".join(f"{names.get(styles[l], 'dotted') if isinstance(styles[l], str) else 'dotted'}: "
                   f"{l}" for l in labels)


def plot_topk(runs: dict[str, Sequence[dict]], ks: Sequence[int] = (1, 5, 15),
              path: str | None = None, *, title: str | None = None) -> Figure:
  """The mean of the top-k rewards among the first n architectures vs n (paper, Fig. 6).

  One color per k, one line style per run (a label with "random" in it is dashed, the others
  solid); the part n < k (the mean of all n so far) is faint. With exactly two runs a second
  panel shows the first run's curve minus the second's, over their common length (the paper's
  Fig. 6 plots this difference, controller minus random).

  Args:
    runs: label -> history rows (in evaluation order).
    ks: the k values.
    path: if given, the figure is saved there (PNG).
  """
  labels = list(runs)
  two = len(labels) == 2
  fig = Figure(figsize=(9, 6.4 if two else 4.6), dpi=_DPI, layout="constrained")
  if two:
    ax, dax = fig.subplots(2, 1, sharex=True, height_ratios=(2.2, 1))
  else:
    ax, dax = fig.add_subplot(), None
  styles = _run_styles(labels)
  colors = [f"C{i}" for i in range(len(ks))]
  curves = {}
  for label in labels:
    rewards = [r.get("reward", 0.0) for r in runs[label]]
    n = np.arange(1, len(rewards) + 1)
    for k, c in zip(ks, colors):
      curves[label, k] = topk_curve(rewards, k) if rewards else np.zeros(0)
      # n < k: the mean of all n so far (fewer than k exist), drawn faint
      ax.plot(n[:k], curves[label, k][:k], color=c, ls=styles[label], lw=1.0, alpha=0.35)
      ax.plot(n[k - 1:], curves[label, k][k - 1:], color=c, ls=styles[label], lw=1.5)
  ax.set_ylabel("mean of the top-k rewards")
  ax.grid(alpha=0.3)
  k_handles = [Line2D([], [], color=c, lw=2, label=f"top-{k}") for k, c in zip(ks, colors)]
  run_handles = [Line2D([], [], color="black", ls=styles[l], lw=1.5, label=l) for l in labels]
  leg = ax.legend(handles=k_handles, loc="lower right", fontsize=8, title="k", title_fontsize=8)
  ax.add_artist(leg)
  ax.legend(handles=run_handles, loc="lower center", fontsize=8, title="searcher",
            title_fontsize=8)
  ax.set_title(title or "Top-k mean reward among the first n architectures")
  if dax is not None:
    a, b = labels
    for k, c in zip(ks, colors):
      m = min(len(curves[a, k]), len(curves[b, k]))
      n, diff = np.arange(1, m + 1), curves[a, k][:m] - curves[b, k][:m]
      dax.plot(n[:k], diff[:k], color=c, lw=1.0, alpha=0.35)
      dax.plot(n[k - 1:], diff[k - 1:], color=c, lw=1.5)
    dax.axhline(0, color="black", lw=0.8)
    dax.set_ylabel(f"{a} − {b}", fontsize=9)
    dax.grid(alpha=0.3)
    dax.set_xlabel("number of architectures evaluated (n)")
  else:
    ax.set_xlabel("number of architectures evaluated (n)")
  if path:
    fig.savefig(path, dpi=_DPI)
  return fig


# ----------------------------------------------------------------------------------------------
# Architecture diagrams


def _as_json(obj) -> dict:
  """A history row's ``arch``, an architecture's JSON form, or an arch object -> JSON form."""
  if isinstance(obj, dict) and "arch" in obj:
    obj = obj["arch"]
  if not isinstance(obj, dict):
    obj = base.to_json(obj)
  if not isinstance(obj, dict):
    raise ValueError(f"not an architecture (a history row, its 'arch' or an arch): {obj!r:.200}")
  return obj


def cell_from_json(obj) -> rnn_cell.CellArch:
  """A :class:`rnn_cell.CellArch` from its JSON form (``base.to_json``) or a history row."""
  obj = _as_json(obj)
  try:
    nodes = tuple(rnn_cell.NodeOp(n["combination"], n["activation"]) for n in obj["nodes"])
    inj = obj["inject"]
    return rnn_cell.CellArch(nodes, rnn_cell.NodeOp(inj["combination"], inj["activation"]),
                             int(obj["c_node"]), int(obj["inject_node"]))
  except (KeyError, TypeError) as e:
    raise ValueError(f"not a cell architecture in the history's JSON form ({e!r}): "
                     f"{obj!r:.200}") from None


def _title_of(row_or_arch) -> str:
  if not (isinstance(row_or_arch, dict) and "arch" in row_or_arch):
    return "architecture"
  r = row_or_arch
  parts = []
  if "step" in r and "index" in r:
    parts.append(f"step {r['step']} child {r['index']}")
  if r.get("reward") is not None:
    parts.append(f"reward {r['reward']:.4f}")
  if r.get("val_ppl") is not None:
    parts.append(f"val ppl {r['val_ppl']:.2f}")
  elif r.get("val_accuracy") is not None:
    parts.append(f"val accuracy {r['val_accuracy']:.4f}")
  if r.get("param_count") is not None:
    parts.append(f"{r['param_count']:,} params")
  if r.get("failed"):
    parts.append("FAILED")
  return ", ".join(parts)


def draw_architecture(row_or_arch_json, space_name: str, path: str | None = None, *,
                      title: str | None = None) -> Figure:
  """A diagram of one architecture.

  Args:
    row_or_arch_json: a history row, its ``arch`` (the JSON form), or a decoded arch.
    space_name: ``config.search_space.name``: "cnn" or "rnn_cell".
    path: if given, the figure is saved there (PNG).
    title: default: the row's step, reward, score and parameter count.

  Raises:
    ValueError: an unknown space, or an arch that is not of that space.
  """
  if title is None:
    title = _title_of(row_or_arch_json)
  if space_name not in DIAGRAM_SPACES:
    raise ValueError(f"draw_architecture: no diagram for search space {space_name!r}; "
                     f"one of {', '.join(map(repr, DIAGRAM_SPACES))}")
  if space_name == "cnn":
    fig = _draw_cnn(cnn_space.arch_from_json(_as_json(row_or_arch_json)), title)
  else:
    fig = _draw_cell(cell_from_json(row_or_arch_json), title)
  if path:
    fig.savefig(path, dpi=_DPI)
  return fig


def _box(ax, x, y, w, h, text, *, fc, ec="black", fontsize=9, lw=1.0, round_=0.08, weight=None):
  ax.add_patch(patches.FancyBboxPatch(
      (x - w / 2, y - h / 2), w, h, boxstyle=f"round,pad=0,rounding_size={round_}", fc=fc, ec=ec,
      lw=lw, zorder=3))
  ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, zorder=4, weight=weight,
          linespacing=1.25)


def _arrow(ax, start, end, color, lw=1.2, ls="-", zorder=2, head=9):
  ax.annotate("", xy=end, xytext=start, zorder=zorder, annotation_clip=False,
              arrowprops=dict(arrowstyle="-|>", color=color, lw=lw, ls=ls, shrinkA=0, shrinkB=0,
                              mutation_scale=head))


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


def _cnn_layer_text(i: int, layer: cnn_space.Layer, arch: cnn_space.CNNArch) -> str:
  head = f"layer {i}: {layer.filter_height}x{layer.filter_width}, {layer.num_filters} filters"
  extra = []
  if (layer.stride_height, layer.stride_width) != (1, 1):
    extra.append(f"stride {layer.stride_height}x{layer.stride_width}")
  if arch.convs_per_layer > 1:
    extra.append(f"{arch.convs_per_layer} convs")
  if i in arch.pool_after_layers:
    extra.append("then 2x2 max-pool")
  return head + ("\n" + ", ".join(extra) if extra else "")


def _draw_cnn(arch: cnn_space.CNNArch, title: str) -> Figure:
  """Image on top, layers in order, the classifier at the bottom; a straight arrow joins
  consecutive boxes, every other edge runs in a lane: skip connections between layers on the
  right (one lane per source layer, one color per source), the image's edges and the edges into
  the classifier on the left. Arrows enter a box's side in its upper half, edges leave from its
  lower half; a dot on a lane is a branch (a crossing without a dot is no connection)."""
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
  fig = Figure(figsize=(x_max - x_min, (y_max - y_min) + 0.5), dpi=_DPI)
  ax = fig.add_axes((0, 0, 1, (y_max - y_min) / ((y_max - y_min) + 0.5)))
  ax.set_xlim(x_min, x_max)
  ax.set_ylim(y_min, y_max)
  ax.axis("off")
  fig.suptitle(title, fontsize=10, y=1 - 0.12 / ((y_max - y_min) + 0.5), va="top")

  for node, text in enumerate(texts):
    fc = "#dbe9f6" if node == 0 else ("#d9f0d3" if node == last else "#fff2cc")
    _box(ax, 0, y_of(node), w, h, text, fc=fc)
  for s, d in straight:
    _arrow(ax, (0, y_of(s) - h / 2), (0, y_of(d) + h / 2), "black")

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
      _arrow(ax, (lane_x[s], y_of(d) + arr), (w / 2, y_of(d) + arr), color_of[s])
  for (kind, _), li in zip(l_groups, l_lanes):
    lx = -w / 2 - lane0 - lane_dx * li
    if kind == "img":
      color = "C7"
      y0 = y_of(0) + dep
      ends = [y_of(d) + arr for d in left_img]
      for ya in ends:
        _arrow(ax, (lx, ya), (-w / 2, ya), color)
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
      _arrow(ax, (lx, ya), (-w / 2, ya), color)
      if len(starts) > 1:
        ax.plot([lx] * (len(starts) - 1), sorted(starts)[:-1], "o", ms=3.5, color=color,
                zorder=2.5)
  return fig


_ACT_COLORS = {"identity": "#f2f2f2", "tanh": "#cfe2f3", "sigmoid": "#d9ead3", "relu": "#fce5cd",
               "sin": "#e6d7f0"}


def _draw_cell(arch: rnn_cell.CellArch, title: str) -> Figure:
  """The cell's tree, leaves at the bottom and the root (-> h_t) on top.

  Under the leaves run two input lines, x_t and h_(t-1); leaf i combines W_i x_t (left input) and
  U_i h_(t-1) + b_i (right input). The cell inject is a box on the edge above its node (the node's
  output replaced by inject(output, c_(t-1)) is what the parent sees), with c_(t-1) beside it;
  ``c_t`` (the pre-activation of its node) is a box beside that node.
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
  title_in = 0.45
  fig = Figure(figsize=((x_hi - x_lo) * scale, (y_hi - y_lo) * scale + title_in), dpi=_DPI)
  frac = (y_hi - y_lo) * scale / ((y_hi - y_lo) * scale + title_in)
  ax = fig.add_axes((0, 0, 1, frac))
  ax.set_xlim(x_lo, x_hi)
  ax.set_ylim(y_lo, y_hi)
  ax.axis("off")
  fig.suptitle(title, fontsize=10, y=1 - 0.08 / ((y_hi - y_lo) * scale + title_in), va="top")

  # Input lines and the leaves' inputs.
  x_col, h_col = "tab:blue", "tab:purple"
  line_lo, line_hi = min(xs[j] for j in range(b)) - 0.9, max(xs[j] for j in range(b)) + 0.9
  ax.plot([line_lo, line_hi], [bus_x, bus_x], color=x_col, lw=2, zorder=1)
  ax.plot([line_lo, line_hi], [bus_h, bus_h], color=h_col, lw=2, zorder=1)
  ax.text(line_lo - 0.12, bus_x, r"$x_t$", ha="right", va="center", fontsize=11, color=x_col)
  ax.text(line_lo - 0.12, bus_h, r"$h_{t-1}$", ha="right", va="center", fontsize=11, color=h_col)
  for j in range(b):
    bottom = ys[j] - h / 2
    _arrow(ax, (xs[j] - 0.4, bus_x), (xs[j] - 0.4, bottom), x_col, lw=1.0, head=7)
    _arrow(ax, (xs[j] + 0.4, bus_h), (xs[j] + 0.4, bottom), h_col, lw=1.0, head=7)

  # Tree edges (child -> parent, or child -> inject -> parent).
  for node in range(n):
    p = parent(node)
    top = (xs[node], ys[node] + h / 2)
    target = (xs[p], ys[p] - h / 2) if p is not None else (xs[root], y_h - h / 2)
    if has_inject and node == inj:
      _arrow(ax, top, (xs[node], y_inj - 0.36), "black")
      _arrow(ax, (xs[node], y_inj + 0.36), target, "black")
    else:
      _arrow(ax, top, target, "black")

  for node, op in enumerate(arch.nodes):
    kind = "leaf" if level_of[node][0] == 0 else ("root" if node == root else "node")
    _box(ax, xs[node], ys[node], w, h, f"{node}: {op.combination}\n{op.activation}",
         fc=_ACT_COLORS.get(op.activation, "white"), fontsize=9,
         lw=2.0 if kind == "root" else 1.0)
  _box(ax, xs[root], y_h, 1.2, 0.62, r"$h_t$", fc="#eeeeee", fontsize=11)

  if has_inject:
    d, cx = outward(inj), side(inj)
    _box(ax, xs[inj], y_inj, w, 0.72,
         f"inject: {arch.inject.combination}\n{arch.inject.activation}",
         fc="#fff2cc", ec="darkorange", fontsize=8.5, lw=1.5)
    _box(ax, cx, y_inj, side_w, 0.58, r"$c_{t-1}$", fc="#eeeeee", fontsize=10)
    _arrow(ax, (cx - d * side_w / 2, y_inj), (xs[inj] + d * w / 2, y_inj), "darkorange", lw=1.3)
  if has_c:
    # Beside its node, at its height: leaves got the room in their spacing, higher levels have it.
    c = arch.c_node
    d, cx, cy = outward(c), side(c), ys[c]
    _box(ax, cx, cy, side_w, 0.58, r"$c_t$", fc="#eeeeee", fontsize=10)
    _arrow(ax, (xs[c] + d * w / 2, cy), (cx - d * side_w / 2, cy), "darkred", lw=1.3, ls="--")
    ax.text((xs[c] + d * w / 2 + cx - d * side_w / 2) / 2, cy + 0.06, "pre-act.", fontsize=7,
            ha="center", va="bottom", color="darkred")
  return fig


# ----------------------------------------------------------------------------------------------
# The report


def _fmt(v) -> str:
  if v is None:
    return "–"
  if isinstance(v, bool):
    return str(v)
  if isinstance(v, float):
    return "nan" if math.isnan(v) else f"{v:.4f}"
  if isinstance(v, int):
    return f"{v:,}"
  return str(v)


def _md_escape(text: str) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def _labels(runs: list[dict]) -> list[str]:
  """The searcher names (``search.searcher``), made unique with the workdir's name if needed."""
  names = [r["config"].get("search.searcher") or os.path.basename(os.path.normpath(r["workdir"]))
           for r in runs]
  if len(set(names)) < len(names):
    names = [f"{n} ({os.path.basename(os.path.normpath(r['workdir']))})"
             for n, r in zip(names, runs)]
  return names


def _steps_done(run: dict) -> str:
  rows, cfg = run["rows"], run["config"]
  counts: dict[int, int] = {}
  for r in rows:
    counts[r["step"]] = counts.get(r["step"], 0) + 1
  m = cfg.get("search.children_per_step")
  total = cfg.get("search.num_steps")
  full = sum(1 for c in counts.values() if m is None or c >= m)
  text = f"{full}" + (f" of {total}" if total is not None else "")
  partial = [s for s, c in counts.items() if m is not None and c < m]
  if partial:
    text += f" (+ step {max(partial)} cut short: {counts[max(partial)]} of {m} children)"
  return text


def _config_rows(runs: list[dict]) -> list[tuple[str, list[str]]]:
  def space(run):
    cfg = run["config"]
    name = space_name(run)
    cls = cfg.get("search_space.class")
    if name == "rnn_cell" and cfg.get("search_space.base"):
      return f"{name} (base {cfg['search_space.base']})"
    if name == "cnn":
      layers = sorted({r.get("num_layers") for r in run["rows"] if r.get("num_layers")})
      depth = (f"{layers[0]}–{layers[-1]}" if len(layers) > 1 else
               f"{layers[0]}" if layers else "?")
      return f"{name} ({depth} layers)"
    return f"{name}" + (f" ({cls})" if cls else "")

  def data(run):
    cfg = run["config"]
    name = cfg.get("data.name")
    if name == "ptb" and cfg.get("data.level"):
      return f"ptb ({cfg['data.level']} level)"
    return name

  def child_budget(run):
    cfg = run["config"]
    if space_name(run) == "rnn_cell":
      e = cfg.get("lm_child.epochs")
    else:
      e = cfg.get("child.epochs")
    return None if e is None else f"{e} epoch{'' if e == 1 else 's'} per child"

  fields = [
      ("workdir", lambda r: f"`{r['workdir']}`"),
      ("searcher", lambda r: r["config"].get("search.searcher")),
      ("search space", space),
      ("data", data),
      ("child training", child_budget),
      ("children per step", lambda r: r["config"].get("search.children_per_step")),
      ("controller steps", _steps_done),
      ("architectures evaluated", lambda r: len(r["rows"])),
      ("seed", lambda r: r["config"].get("seed")),
  ]
  return [(name, [_fmt(fn(r)) for r in runs]) for name, fn in fields]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def top_architectures(rows: Sequence[dict], n: int = 10) -> list[dict]:
  """The ``n`` best rows among children that did not fail, highest reward first."""
  ok = [r for r in rows if not r.get("failed")]
  return sorted(ok, key=lambda r: -float(r.get("reward", 0.0)))[:n]


def write_report(workdir: str, random_workdir: str | None = None,
                 out_dir: str | None = None) -> str:
  """Writes ``report.md`` and its PNGs (``REPORT_FILES``) into ``out_dir`` (default ``workdir``).

  Args:
    workdir: a search workdir (``history.jsonl``; ``steps.jsonl`` and ``config.json`` optional).
    random_workdir: optionally a second search (e.g. random search at the same budget): a second
      column in the summary and ``topk.png``.
    out_dir: where the files go (created if needed); only the report's own files are written.

  Returns:
    The path of ``report.md``.

  Raises:
    FileNotFoundError: a workdir or its ``history.jsonl`` is missing.
    ValueError: a history has no rows.
  """
  runs = [load_run(workdir)]
  if random_workdir:
    runs.append(load_run(random_workdir))
  for r in runs:
    if not r["rows"]:
      raise ValueError(f"{os.path.join(r['workdir'], 'history.jsonl')} has no rows")
  out_dir = out_dir or workdir
  os.makedirs(out_dir, exist_ok=True)
  main = runs[0]
  labels = _labels(runs)
  name = space_name(main)
  rows = main["rows"]

  md = [f"# Architecture search report: `{os.path.basename(os.path.normpath(workdir))}`", ""]
  md += ["## Configuration", ""]
  md.append(_md_table([""] + labels, [[k] + v for k, v in _config_rows(runs)]))
  if len(runs) == 2:
    a, b = runs
    notes = []
    if space_name(a) != space_name(b):
      notes.append(f"the two runs searched different spaces ({space_name(a)}, {space_name(b)})")
    if len(a["rows"]) != len(b["rows"]):
      notes.append(f"the budgets differ ({len(a['rows'])} vs {len(b['rows'])} architectures)")
    # keys in one config only come from another version of the code: not a difference
    diff = sorted(k for k in set(a["config"]) & set(b["config"])
                  if a["config"][k] != b["config"][k] and k != "search.searcher"
                  and not k.endswith(("num_devices", "gather_timeout_s", "data_dir", "verbose",
                                      "keep_checkpoints")))
    if diff:
      notes.append("their configs also differ in " + ", ".join(f"`{k}`" for k in diff[:8])
                   + (", ..." if len(diff) > 8 else ""))
    if notes:
      md += ["", "Note: " + "; ".join(notes) + "."]

  md += ["", "## Summary", "", "`nas_jax.analysis.summarize` of each history:", ""]
  sums = [analysis.summarize(r["rows"]) for r in runs]
  keys = [k for k in sums[0] if k != "best_description"]
  keys += [k for s in sums[1:] for k in s if k not in keys and k != "best_description"]
  md.append(_md_table(["metric"] + labels, [[k] + [_fmt(s.get(k)) for s in sums] for k in keys]))

  fig = plot_rewards(rows, main["steps"], title=f"Reward of each architecture ({labels[0]})")
  fig.savefig(os.path.join(out_dir, "rewards.png"), dpi=_DPI)
  md += ["", "## Rewards", "",
         "Each point is one child network in evaluation order"
         + (" (red crosses: failed children, reward 0)" if any(r.get("failed") for r in rows)
            else "")
         + "; the black line is a moving average"
         + ("; the orange line is the baseline the controller subtracted from the rewards of each "
            "step (plotted at the step's last child)"
            if main["steps"] and any(s.get("baseline") is not None for s in main["steps"])
            else "")
         + ".", "", "![rewards](rewards.png)"]

  if len(runs) > 1:
    plot_topk({l: r["rows"] for l, r in zip(labels, runs)},
              path=os.path.join(out_dir, "topk.png"),
              title="Top-k mean reward among the first n architectures")
    md += ["", "## Top-k rewards vs architectures evaluated", "",
           f"For k = 1, 5, 15: the mean of the k best rewards among the first n architectures "
           f"(as Fig. 6 of Zoph & Le, 2017); {_style_legend(labels)}. The lower "
           f"panel is the difference {labels[0]} − {labels[1]}.", "", "![top-k](topk.png)"]

  best = analysis.best_row(rows)
  md += ["", "## Best architecture", ""]
  if best is None:
    md.append("Every child failed: there is no best architecture.")
  else:
    md += [f"Step {best['step']}, child {best['index']}: reward {best['reward']:.4f}"
           + (f", validation perplexity {best['val_ppl']:.2f}" if best.get("val_ppl") is not None
              else f", validation accuracy {best.get('val_accuracy', float('nan')):.4f}")
           + f", {best.get('param_count', 0):,} parameters.", "",
           f"`{best.get('description', '')}`", ""]
    if name == "cnn":
      md.append("Every layer is conv → batch norm → ReLU. A layer with several incoming arrows "
                "concatenates them on depth (smaller inputs zero-padded); a layer with none takes "
                "the image; layers that no other layer consumes feed the classifier.")
    elif name == "rnn_cell":
      md.append("Leaf i combines W_i x_t and U_i h_(t-1) + b_i; each node is "
                "activation(combination(left, right)); the inject replaces its node's output by "
                "inject(output, c_(t-1)); c_t is the pre-activation of its node; h_t is the root's "
                "output.")
    if name in DIAGRAM_SPACES:
      draw_architecture(best, name, path=os.path.join(out_dir, "best.png"))
      md += ["", "![best architecture](best.png)"]
    else:  # e.g. a custom space: its description above is all there is
      md.append(f"(No diagram: `draw_architecture` draws the spaces {', '.join(DIAGRAM_SPACES)}; "
                f"this one is {name!r}.)")

  ppl = any(r.get("val_ppl") is not None for r in rows)
  top = top_architectures(rows, 10)
  md += ["", f"## Top {len(top)} architectures", ""]
  table = []
  for i, r in enumerate(top):
    score = r.get("val_ppl") if ppl else r.get("val_accuracy")
    table.append([str(i + 1), f"{r['step']}.{r['index']}", _fmt(float(r["reward"])), _fmt(score),
                  _fmt(r.get("param_count")), f"`{r.get('description', '')}`"])
  md.append(_md_table(["#", "step.child", "reward", "val ppl" if ppl else "val accuracy",
                       "params", "description"], table))
  md.append("")

  path = os.path.join(out_dir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(md))
  return path
