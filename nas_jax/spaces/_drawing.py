"""Shared pieces of the architecture diagrams (``cnn_diagram``, ``rnn_cell_diagram``): a figure with
a title, a drawing area in data units and a wrapped caption, rounded boxes and arrows.

Figures are :class:`matplotlib.figure.Figure` objects made without ``pyplot``: nothing global
changes and nothing has to be closed. Only the diagram modules import this (and matplotlib).
"""

from __future__ import annotations

import textwrap

from matplotlib import patches
from matplotlib.figure import Figure

DPI = 110
_CAPTION_PT = 7.5
_CAPTION_LINE_IN = 0.15  # line height of the caption
_CAPTION_CHAR_IN = 0.058  # mean character width of the caption's font


def framed(width_in: float, body_in: float, title: str, caption: str = "", *,
           title_in: float = 0.5, title_pad_in: float = 0.1):
  """A figure ``width_in`` wide: the title on top, an axes of height ``body_in`` (axis off), then
  ``caption`` wrapped to the width in small gray type. Returns ``(fig, ax)``."""
  chars = max(20, int((width_in - 0.3) / _CAPTION_CHAR_IN))
  lines = textwrap.wrap(caption, chars) if caption else []
  caption_in = _CAPTION_LINE_IN * len(lines) + 0.2 if lines else 0.0
  height = body_in + title_in + caption_in
  fig = Figure(figsize=(width_in, height), dpi=DPI)
  ax = fig.add_axes((0, caption_in / height, 1, body_in / height))
  ax.axis("off")
  if title:
    fig.suptitle(title, fontsize=10, y=1 - title_pad_in / height, va="top")
  if lines:
    fig.text(0.15 / width_in, (caption_in - 0.08) / height, "\n".join(lines), ha="left", va="top",
             fontsize=_CAPTION_PT, color="dimgray", linespacing=1.3)
  return fig, ax


def box(ax, x, y, w, h, text, *, fc, ec="black", fontsize=9, lw=1.0, round_=0.08, weight=None):
  """A rounded box centred at (x, y) with centred text."""
  ax.add_patch(patches.FancyBboxPatch(
      (x - w / 2, y - h / 2), w, h, boxstyle=f"round,pad=0,rounding_size={round_}", fc=fc, ec=ec,
      lw=lw, zorder=3))
  ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, zorder=4, weight=weight,
          linespacing=1.25)


def arrow(ax, start, end, color, lw=1.2, ls="-", zorder=2, head=9):
  """A straight arrow from ``start`` to ``end`` (data units)."""
  ax.annotate("", xy=end, xytext=start, zorder=zorder, annotation_clip=False,
              arrowprops=dict(arrowstyle="-|>", color=color, lw=lw, ls=ls, shrinkA=0, shrinkB=0,
                              mutation_scale=head))
