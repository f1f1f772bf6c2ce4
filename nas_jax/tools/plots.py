"""The search's curves: the rewards in evaluation order and the top-k curves (Zoph & Le, Fig. 6).

* :func:`plot_rewards`: reward of every architecture in evaluation order, failed children, the
  controller's baseline (``steps.jsonl``, REINFORCE only) and a moving average
  (:func:`moving_average`);
* :func:`plot_topk`: the mean reward of the top-k unique architectures among the first n vs n
  (:func:`nas_jax.tools.analysis.unique_topk_curve`), one line per run (:func:`run_styles`:
  random search dashed);
* :func:`plot_topk_groups`: the same over several seeds per searcher: the mean over seeds with
  its 95% t-interval shaded, one colour per searcher, one panel per k.

The figures are :class:`matplotlib.figure.Figure` objects made without ``pyplot``: nothing global
changes (a notebook's backend stays as it is) and nothing has to be closed.
"""

from __future__ import annotations

import collections
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, StrMethodFormatter

from nas_jax.tools import analysis

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


def plot_rewards(rows: Sequence[dict], steps: Sequence[dict] | None = None, path: str | None = None,
                 ax=None, *, window: int | None = None, title: str | None = None) -> Figure:
  """Reward of each architecture vs its index in the history (evaluation order).

  Failed children are red crosses at 0; a line shows the trailing moving average of the rewards
  (``window``: default the larger of 16 and the children per step), and, if ``steps`` (the rows of
  ``steps.jsonl``) have a ``baseline`` (REINFORCE), the baseline each controller step used, plotted
  at the index of the step's last child. A change of depth (CNN schedule) is a dotted vertical line.
  The best architecture is a star: in a weight-sharing search, the best of the derive rows (scored
  on the whole validation set), not a score on one minibatch.

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
  derived = np.array([r.get("evaluation") == "derive" for r in rows], bool)
  ranked = ~failed & (derived if derived.any() else True)   # see history.ranking_rows
  if ranked.any():
    ok = np.flatnonzero(ranked)
    b = ok[np.argmax(rewards[ok])]
    ax.scatter([b], [rewards[b]], s=140, marker="*", color="gold", edgecolors="black",
               linewidths=0.8, label=f"best {'derived ' if derived.any() else ''}({rewards[b]:.4g})",
               zorder=6)
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


def _integer_x(ax) -> None:
  """Ticks at whole numbers of architectures, labelled without decimals or an offset."""
  ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
  ax.xaxis.set_major_formatter(StrMethodFormatter("{x:.0f}"))


def _k_styles(ks: Sequence[int]) -> list[dict[str, Any]]:
  """Colour, marker and width per k: the first k widest, so curves that coincide (top-1 equal to
  top-5 early in a search) show as a coloured line inside a wider one of another colour."""
  markers = ["o", "s", "^", "D", "v", "P"]
  return [{"color": f"C{i % 10}", "marker": markers[i % len(markers)],
           "lw": max(2.8 - 0.8 * i, 0.9)} for i in range(len(ks))]


def _marks(n: int, i: int, num: int) -> slice:
  """About 8 markers along a curve of n points, shifted for the i-th of num curves so that the
  markers of coinciding curves do not sit on each other."""
  every = max(1, n // 8)
  return slice(min(i * every // max(num, 1), max(n - 1, 0)), None, every)


def _in_unit_interval(row_lists: Sequence[Sequence[dict]]) -> bool:
  """Whether every finite reward lies in [0, 1] (an accuracy, or a reward such as accuracy³)."""
  r = np.array([x.get("reward", 0.0) for rows in row_lists for x in rows], np.float64)
  r = r[np.isfinite(r)]
  return bool(r.size) and bool(((r >= 0) & (r <= 1)).all())


def _faint_until(rows: Sequence[dict], k: int) -> int:
  """The number of first rows with fewer than k unique architectures that did not fail."""
  return int(np.searchsorted(analysis.unique_count_curve(list(rows)), k))


def plot_topk(runs: dict[str, Sequence[dict]], ks: Sequence[int] = (1, 5, 15),
              path: str | None = None, *, title: str | None = None,
              best_of_samples: bool = False) -> Figure:
  """The mean reward of the top-k unique architectures among the first n vs n (paper, Fig. 6).

  The curves are :func:`nas_jax.tools.analysis.unique_topk_curve`: an architecture sampled twice
  counts once (valued at its mean reward over its samples; with ``best_of_samples`` its best),
  failed children are left out, n counts every architecture
  sampled. One colour, marker and width per k (the first k widest, so that curves which coincide,
  top-1 equal to top-5, stay visible), one line style per run (a label with "random" in it is
  dashed, the others solid); the legends sit outside the axes and n is ticked at whole numbers.
  Where fewer than k unique architectures exist yet (the mean of those there are)
  the line is faint. With exactly two runs a second panel shows the first run's curve minus the
  second's, over their common length (the paper's Fig. 6 plots this difference, controller minus
  random). For several seeds per searcher see :func:`plot_topk_groups`.

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
  kstyles = _k_styles(ks)
  curves, faint = {}, {}
  for label in labels:
    rows = list(runs[label])
    n = np.arange(1, len(rows) + 1)
    for i, (k, st) in enumerate(zip(ks, kstyles)):
      curves[label, k] = analysis.unique_topk_curve(rows, k, best_of_samples)
      f = faint[label, k] = _faint_until(rows, k)
      ax.plot(n[:f + 1], curves[label, k][:f + 1], color=st["color"], ls=styles[label],
              lw=st["lw"] * 0.6, alpha=0.35, zorder=2 + i)
      ax.plot(n, curves[label, k], color=st["color"], ls="none", marker=st["marker"], ms=4,
              markevery=_marks(len(n), i, len(ks)), zorder=2 + i)
      ax.plot(n[f:], curves[label, k][f:], color=st["color"], ls=styles[label], lw=st["lw"],
              zorder=2 + i)
  ax.set_ylabel("mean reward of the top-k unique")
  ax.grid(alpha=0.3)
  _integer_x(ax)
  k_handles = [Line2D([], [], color=st["color"], marker=st["marker"], ms=5, lw=st["lw"],
                      label=f"top-{k}") for k, st in zip(ks, kstyles)]
  run_handles = [Line2D([], [], color="black", ls=styles[l], lw=1.5, label=l) for l in labels]
  leg = ax.legend(handles=k_handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                  title="k", title_fontsize=8, frameon=False)
  ax.add_artist(leg)
  ax.legend(handles=run_handles, loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=8,
            title="searcher", title_fontsize=8, frameon=False)
  ax.set_title(title or "Top-k unique architectures: mean reward among the first n")
  if dax is not None:
    a, b = labels
    for i, (k, st) in enumerate(zip(ks, kstyles)):
      m = min(len(curves[a, k]), len(curves[b, k]))
      n, diff = np.arange(1, m + 1), curves[a, k][:m] - curves[b, k][:m]
      f = min(max(faint[a, k], faint[b, k]), m)
      dax.plot(n[:f + 1], diff[:f + 1], color=st["color"], lw=st["lw"] * 0.6, alpha=0.35,
               zorder=2 + i)
      dax.plot(n, diff, color=st["color"], ls="none", marker=st["marker"], ms=4,
               markevery=_marks(len(n), i, len(ks)), zorder=2 + i)
      dax.plot(n[f:], diff[f:], color=st["color"], lw=st["lw"], zorder=2 + i)
    dax.axhline(0, color="black", lw=0.8)
    dax.set_ylabel(f"{a} − {b}", fontsize=9)
    dax.grid(alpha=0.3)
    _integer_x(dax)
    dax.set_xlabel("number of architectures sampled (n)")
  else:
    ax.set_xlabel("number of architectures sampled (n)")
  if path:
    fig.savefig(path, dpi=DPI)
  return fig


def plot_topk_groups(groups: dict[str, Sequence[Sequence[dict]]], ks: Sequence[int] = (1, 5, 15),
                     path: str | None = None, *, title: str | None = None,
                     unit_interval: bool | None = None, best_of_samples: bool = False) -> Figure:
  """Fig. 6 over seeds: top-k unique reward vs architectures sampled, mean and 95% t-interval.

  For each searcher (group) and k: :func:`nas_jax.tools.analysis.unique_topk_curve` of each seed's
  history (each architecture valued at its mean reward over its samples; ``best_of_samples``: its
  best), their mean over seeds, and the pointwise t-interval of that mean shaded
  (:func:`nas_jax.tools.analysis.t_band`; a group of one seed: one run, its line alone). One panel
  per k; one colour per searcher, with a line style per searcher as well (:func:`run_styles`:
  random search dashed), so that curves which coincide stay visible; the legend sits outside the
  panels.

  Args:
    groups: searcher -> one list of history rows per seed (each in evaluation order, ideally of one
      length: the curves are cut to the shortest).
    ks: the k values, one panel each.
    path: if given, the figure is saved there (PNG).
    unit_interval: clip the bands to [0, 1], where the mean of a bounded reward lies (an interval
      of few seeds reaches past it); default: when every reward lies in [0, 1].
  """
  labels = list(groups)
  if unit_interval is None:
    unit_interval = _in_unit_interval([rows for runs in groups.values() for rows in runs])
  fig = Figure(figsize=(3.4 * len(ks) + 1.8, 3.6), dpi=DPI, layout="constrained")
  axes = np.atleast_1d(fig.subplots(1, len(ks), sharex=True, squeeze=False)[0])
  styles = run_styles(labels)
  colors = {l: f"C{i % 10}" for i, l in enumerate(labels)}
  handles = []
  for gi, label in enumerate(labels):
    seeds = [list(rows) for rows in groups[label]]
    m = min(len(r) for r in seeds) if seeds else 0
    n = np.arange(1, m + 1)
    for ax, k in zip(axes, ks):
      curves = np.stack([analysis.unique_topk_curve(r[:m], k, best_of_samples)
                         for r in seeds]) if m else (
          np.zeros((1, 0)))
      mean, lo, hi = analysis.t_band(curves)
      if len(seeds) > 1:
        if unit_interval:
          lo, hi = np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)
        ax.fill_between(n, lo, hi, color=colors[label], alpha=0.18, linewidth=0, zorder=2)
      # later searchers drawn thinner on top: coinciding curves show both colours
      ax.plot(n, mean, color=colors[label], ls=styles[label], lw=2.0 - 0.3 * min(gi, 3),
              zorder=3 + gi)
    seeds_text = f"{len(seeds)} seeds" if len(seeds) > 1 else "one run"
    handles.append(Line2D([], [], color=colors[label], ls=styles[label], lw=2,
                          label=f"{label} ({seeds_text})"))
  for ax, k in zip(axes, ks):
    ax.set_title(f"top-{k}", fontsize=10)
    ax.set_xlabel("architectures sampled")
    _integer_x(ax)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("mean reward of the top-k unique")
  fig.legend(handles=handles, loc="outside right upper", fontsize=9, frameon=False,
             title="searcher (band: 95% t-interval)", title_fontsize=8)
  fig.suptitle(title or "Top-k unique architectures vs architectures sampled (mean over seeds)",
               fontsize=11)
  if path:
    fig.savefig(path, dpi=DPI)
  return fig
