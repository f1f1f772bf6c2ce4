"""topk.png and fig6 stay readable: legends outside the data, whole-number ticks, coinciding
curves visible, bands of a reward in [0, 1] inside [0, 1]."""

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.legend import Legend

from nas_jax.tools import plots


def _rows(seed, n=40):
  rng = np.random.default_rng(seed)
  return [{"step": i // 4, "index": i % 4, "tokens": [int(t) for t in rng.integers(0, 4, 3)],
           "reward": float(rng.beta(5, 2)), "failed": False} for i in range(n)]


def _drawn(fig):
  FigureCanvasAgg(fig).draw()
  return fig.canvas.get_renderer()


def _legends(fig):
  return list(fig.legends) + [a for ax in fig.axes for a in ax.get_children()
                              if isinstance(a, Legend)]


def _check_readable(fig):
  renderer = _drawn(fig)
  legends = _legends(fig)
  assert legends
  for leg in legends:
    box = leg.get_window_extent(renderer)
    for ax in fig.axes:
      assert not box.overlaps(ax.get_window_extent(renderer)), (leg, ax)
  shown = []
  for ax in fig.axes:  # (an axes above another with a shared x has no tick labels)
    lo, hi = ax.get_xlim()
    labels = [t.get_text().replace("\u2212", "-") for x, t in
              zip(ax.xaxis.get_majorticklocs(), ax.get_xticklabels())
              if lo <= x <= hi and t.get_visible() and t.get_text()]
    assert all(str(int(t)) == t for t in labels), labels
    shown.append(len(labels))
  assert max(shown) >= 3, shown


@pytest.mark.parametrize("runs", [1, 2])
def test_topk_legend_outside_integer_ticks(runs):
  fig = plots.plot_topk({name: _rows(i) for i, name in enumerate(["reinforce", "random"][:runs])})
  _check_readable(fig)


def test_topk_curves_that_coincide_stay_distinct():
  rows = _rows(0, n=3)  # three architectures: top-5 and top-15 are the same curve
  fig = plots.plot_topk({"reinforce": rows}, ks=(1, 5, 15))
  lines = [l for l in fig.axes[0].lines if l.get_linestyle() != "None"]
  solid = lines[1::2]  # per k: the faint start, then the full line
  assert len({l.get_color() for l in solid}) == 3
  assert len({l.get_linewidth() for l in solid}) == 3  # the earlier k wider, underneath
  markers = [l.get_marker() for l in fig.axes[0].lines if l.get_linestyle() == "None"]
  assert len(set(markers)) == 3


def test_topk_groups_readable_and_bands_clipped_to_unit_interval():
  groups = {"reinforce": [_rows(s) for s in range(3)], "random": [_rows(s + 10) for s in range(3)]}
  fig = plots.plot_topk_groups(groups)
  _check_readable(fig)
  bands = [c for ax in fig.axes for c in ax.collections if isinstance(c, PolyCollection)]
  assert bands
  ys = np.concatenate([p.vertices[:, 1] for c in bands for p in c.get_paths()])
  assert ys.min() >= 0.0 and ys.max() <= 1.0
  # without the clip the same seeds' 95% intervals reach past 1 (three seeds: t = 4.3)
  fig = plots.plot_topk_groups(groups, unit_interval=False)
  ys = np.concatenate([p.vertices[:, 1] for ax in fig.axes for c in ax.collections
                       if isinstance(c, PolyCollection) for p in c.get_paths()])
  assert ys.max() > 1.0 or ys.min() < 0.0
