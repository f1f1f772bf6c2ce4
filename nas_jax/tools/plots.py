"""The search's curves: the rewards in evaluation order and the top-k curves (Zoph & Le, Fig. 6).

* :func:`plot_rewards`: reward of every architecture in evaluation order, failed children, the
  controller's baseline (``steps.jsonl``, REINFORCE only) and a moving average
  (:func:`moving_average`);
* :func:`plot_topk` / :func:`topk_curve`: the mean of the top-k rewards among the first n
  architectures vs n, one line per searcher (:func:`run_styles`: random search dashed).

The figures are :class:`matplotlib.figure.Figure` objects made without ``pyplot``: nothing global
changes (a notebook's backend stays as it is) and nothing has to be closed.
"""

from __future__ import annotations

import collections
import heapq
import math
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

DPI = 110
"""Resolution of the saved PNGs."""


def _children_per_step(rows: Sequence[dict]) -> int:
  """The most common number of rows per controller step (1 if unknown)."""
  counts = collections.Counter(r.get("step", 0) for r in rows)
  return collections.Counter(counts.values()).most_common(1)[0][0] if counts else 1


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
    fig = Figure(figsize=(9, 4.6), dpi=DPI, layout="constrained")
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
    fig.savefig(path, dpi=DPI)
  return fig


def run_styles(labels: Sequence[str]) -> dict[str, Any]:
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


def style_legend(labels: Sequence[str]) -> str:
  """Which line style is which run, in words (as :func:`run_styles` draws them)."""
  names = {"-": "solid", "--": "dashed", "-.": "dash-dot"}
  styles = run_styles(labels)
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
  fig = Figure(figsize=(9, 6.4 if two else 4.6), dpi=DPI, layout="constrained")
  if two:
    ax, dax = fig.subplots(2, 1, sharex=True, height_ratios=(2.2, 1))
  else:
    ax, dax = fig.add_subplot(), None
  styles = run_styles(labels)
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
    fig.savefig(path, dpi=DPI)
  return fig
