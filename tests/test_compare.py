"""Comparing searchers over seeds: unique top-k, t-intervals, the table, the JSON and the plot."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure

from nas_jax.spaces import base
from nas_jax.tools import analysis, plots, tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T_975_2DF = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (4.303)


def _row(i, tokens, reward, *, failed=False, m=2, seconds=1.0):
  """A history row in the form nas_jax.core.search writes (experiments/search.py, :quick)."""
  return {"step": i // m, "index": i % m, "num_layers": 1, "tokens": list(tokens),
          "arch": {"layers": [{"filter_height": 3, "filter_width": 3, "stride_height": 1,
                               "stride_width": 1, "num_filters": 8, "inputs": []}],
                   "convs_per_layer": 1, "pool_after_layers": []},
          "description": f"arch{''.join(map(str, tokens))}", "reward": 0.0 if failed else reward,
          "val_accuracy": 0.0 if failed else reward ** (1 / 3), "val_accuracies": [],
          "param_count": 100, "seconds": seconds, "failed": failed,
          "error": "loss is not finite" if failed else ""}


def _write(path, rows, *, searcher="reinforce", seed=0, metric=base.ACCURACY, m=2,
           step_seconds=10.0):
  os.makedirs(path)
  with open(os.path.join(path, "history.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  steps = [{"step": s, "num_layers": 1, "children": m, "reward_mean": 0.5, "reward_max": 0.5,
            "entropy": 1.0, "controller_seconds": 0.1, "children_seconds": step_seconds - 0.1,
            "seconds": step_seconds} for s in range(math.ceil(len(rows) / m))]
  with open(os.path.join(path, "steps.jsonl"), "w") as f:
    f.writelines(json.dumps(s) + "\n" for s in steps)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({"search.searcher": searcher, "seed": seed, "search_space.name": "cnn",
               "search_space.module": "nas_jax.spaces.cnn", "search_space.class": "CNNSpace",
               "metric.name": metric.name, "metric.higher_is_better": metric.higher_is_better,
               "search.children_per_step": m}, f)
  return path


def _seed_rows(top):
  """8 rows whose unique top-1 is ``top``: one architecture sampled twice, one failure."""
  return [_row(0, (0,), 0.2), _row(1, (1,), top), _row(2, (1,), top - 0.05),  # (1,) twice
          _row(3, (2,), 0.0, failed=True), _row(4, (3,), 0.4), _row(5, (4,), 0.3),
          _row(6, (5,), 0.1), _row(7, (6,), 0.5)]


@pytest.fixture
def groups(tmp_path):
  a = [_write(str(tmp_path / f"a{s}"), _seed_rows(top), seed=s)
       for s, top in enumerate((0.8, 0.9, 1.0))]
  r = [_write(str(tmp_path / "r0"), _seed_rows(0.6), searcher="random")]
  return {"reinforce": a, "random": r}


def test_duplicates_count_once():
  rows = [_row(0, (1, 2), 0.9), _row(1, (1, 2), 0.7), _row(2, (3,), 0.5),
          _row(3, (4,), 0.95, failed=True), _row(4, (5,), 0.3)]
  # unique, each valued at the mean of its samples: {(1,2): 0.8, (3,): 0.5, (5,): 0.3}; the
  # failed child is left out; --best_of_samples: (1,2) at 0.9
  assert analysis.unique_rewards(rows) == pytest.approx({"[1, 2]": 0.8, "[3]": 0.5, "[5]": 0.3})
  assert analysis.unique_rewards(rows, best_of_samples=True) == {"[1, 2]": 0.9, "[3]": 0.5,
                                                                  "[5]": 0.3}
  s = analysis.summarize(rows)
  assert s["top1_mean_reward"] == pytest.approx(0.8)
  assert s["top5_mean_reward"] == pytest.approx((0.8 + 0.5 + 0.3) / 3)  # not (0.9 + 0.7 + ...)
  assert analysis.summarize(rows, best_of_samples=True)["top1_mean_reward"] == 0.9
  assert s["unique_architectures"] == 4 and s["failed"] == 1 and s["failed_share"] == 0.2
  assert analysis.top_k_mean([r["reward"] for r in rows], 2) == pytest.approx(0.8)  # non-unique
  # the curve: n counts every row sampled, the mean is over the unique ones so far
  np.testing.assert_allclose(analysis.unique_topk_curve(rows, 2), [0.9, 0.8, 0.65, 0.65, 0.65])
  np.testing.assert_allclose(analysis.unique_topk_curve(rows, 5),
                             [0.9, 0.8, 0.65, 0.65, (0.8 + 0.5 + 0.3) / 3])
  np.testing.assert_allclose(analysis.unique_topk_curve(rows, 2, best_of_samples=True),
                             [0.9, 0.9, 0.7, 0.7, 0.7])
  np.testing.assert_array_equal(analysis.unique_count_curve(rows), [1, 1, 2, 2, 3])
  # a re-sample moves the architecture's value to the mean of its samples (best: only up)
  rows2 = [_row(0, (1,), 0.5), _row(1, (2,), 0.6), _row(2, (1,), 0.8)]
  np.testing.assert_allclose(analysis.unique_topk_curve(rows2, 1), [0.5, 0.6, 0.65])
  np.testing.assert_allclose(analysis.unique_topk_curve(rows2, 2), [0.5, 0.55, 0.625])
  np.testing.assert_allclose(analysis.unique_topk_curve(rows2, 1, best_of_samples=True),
                             [0.5, 0.6, 0.8])
  # no successful child yet: NaN
  curve = analysis.unique_topk_curve([_row(0, (1,), 0, failed=True), _row(1, (2,), 0.4)], 3)
  assert math.isnan(curve[0]) and curve[1] == 0.4
  with pytest.raises(ValueError):
    analysis.unique_topk_curve(rows, 0)


def test_unique_perplexity_top5():
  rows = [_row(0, (1,), 0.5), _row(1, (1,), 0.4), _row(2, (2,), 0.3)]
  for r, ppl in zip(rows, (10.0, 12.0, 20.0)):
    r["val_ppl"] = ppl
  s = analysis.summarize(rows, metric=base.PERPLEXITY)
  assert s["best_val_ppl"] == 11.0 and s["top5_mean_val_ppl"] == 15.5  # (mean(10, 12) + 20) / 2
  s = analysis.summarize(rows, metric=base.PERPLEXITY, best_of_samples=True)
  assert s["best_val_ppl"] == 10.0 and s["top5_mean_val_ppl"] == 15.0  # (10 + 20) / 2


def test_interval_math():
  iv = analysis.t_interval([0.8, 0.9, 1.0])
  half = T_975_2DF * 0.1 / math.sqrt(3)  # s = 0.1
  assert iv["mean"] == pytest.approx(0.9) and iv["n"] == 3
  assert iv["lo"] == pytest.approx(0.9 - half) and iv["hi"] == pytest.approx(0.9 + half)
  one = analysis.t_interval([0.7])
  assert one["mean"] == 0.7 and one["lo"] is None and one["hi"] is None
  mean, lo, hi = analysis.t_band([[1.0, 2.0], [3.0, 2.0]])
  np.testing.assert_allclose(mean, [2.0, 2.0])
  half = 12.706204736174698 * math.sqrt(2.0) / math.sqrt(2)  # t(0.975, 1 df); s = sqrt(2)
  np.testing.assert_allclose(lo, [2.0 - half, 2.0])
  np.testing.assert_allclose(hi, [2.0 + half, 2.0])


def test_compare_groups(groups):
  loaded = analysis.load_groups(groups)
  assert loaded.budget == 8 and loaded.metric == base.ACCURACY
  res = analysis.compare_groups(loaded)
  g = res["groups"]["reinforce"]
  top1 = g["stats"]["top1_mean_reward"]
  # the top architecture of each seed was sampled twice (top, top - 0.05): valued at the mean
  assert top1["values"] == pytest.approx([0.775, 0.875, 0.975])
  assert top1["lo"] == pytest.approx(0.875 - T_975_2DF * 0.1 / math.sqrt(3))
  # top-5 of seed 0: unique {0.775, 0.5, 0.4, 0.3, 0.2} (0.8 and 0.75 are one architecture)
  assert g["runs"][0]["top5_mean_reward"] == pytest.approx(0.435)
  assert g["stats"]["unique_architectures"]["mean"] == 7  # 8 rows, one architecture twice
  assert g["stats"]["failed_share"]["mean"] == pytest.approx(1 / 8)
  assert g["stats"]["wall_seconds"]["mean"] == 40.0  # 4 steps x 10 s (steps.jsonl)
  assert g["runs"][0]["wall_seconds_from"] == "steps.jsonl"
  assert g["seeds"] == [0, 1, 2] and g["searchers"] == ["reinforce"] and g["notes"] == []
  assert res["groups"]["random"]["stats"]["top1_mean_reward"]["lo"] is None  # one run
  assert res["groups"]["random"]["interval"].startswith("one run")
  assert g["interval"] == analysis.INTERVAL
  q = res["groups"]["random"]["runs"][0]
  assert q["mean_reward_first_quarter"] == pytest.approx(0.4)  # (0.2 + 0.6) / 2
  assert q["mean_reward_last_quarter"] == pytest.approx(0.3)  # (0.1 + 0.5) / 2
  assert q["best_val_accuracy"] == pytest.approx((0.6 ** (1 / 3) + 0.55 ** (1 / 3)) / 2)
  json.dumps(res)  # JSON-friendly
  md = tables.comparison_markdown(res)
  line = next(l for l in md.splitlines() if l.startswith("| reinforce |"))
  assert f"| 0.8750 ± {T_975_2DF * 0.1 / math.sqrt(3):.4f} |" in line and "| 3 |" in line
  assert "| random | 1 (one run) | 0.5750 |" in md and "95% t-interval" in md
  assert analysis.VALUE_FAIR in md
  best_of = analysis.compare_groups(loaded, best_of_samples=True)
  assert best_of["groups"]["reinforce"]["stats"]["top1_mean_reward"]["values"] == pytest.approx(
      [0.8, 0.9, 1.0])
  assert analysis.VALUE_BEST_OF in tables.comparison_markdown(best_of)
  assert "40 s" in line and "12.5%" in line


def test_wall_time_without_steps():
  rows = [_row(i, (i,), 0.5, seconds=2.5) for i in range(4)]
  assert analysis.wall_seconds(rows, None) == (10.0, "children")
  steps = [{"step": 0, "seconds": 3.0}, {"step": 1, "seconds": 4.0}, {"step": 2, "seconds": 9.0}]
  assert analysis.wall_seconds(rows, steps) == (7.0, "steps.jsonl")  # rows end at step 1


def test_mismatches_are_errors(groups, tmp_path):
  ppl = _write(str(tmp_path / "p0"), _seed_rows(0.5), metric=base.PERPLEXITY)
  with pytest.raises(analysis.CompareError, match="metrics differ.*'ppl'.*val_ppl"):
    analysis.load_groups({**groups, "ppl": [ppl]})
  short = _write(str(tmp_path / "s0"), _seed_rows(0.5)[:6])
  with pytest.raises(analysis.CompareError, match="budgets differ.*'short'"):
    analysis.load_groups({**groups, "short": [short]})
  loaded = analysis.load_groups({**groups, "short": [short]}, budget=6)
  assert loaded.budget == 6 and all(len(r["rows"]) == 6 for rs in loaded.runs.values()
                                    for r in rs)
  with pytest.raises(analysis.CompareError, match="fewer than the budget 7"):
    analysis.load_groups({"short": [short]}, budget=7)
  with pytest.raises(analysis.CompareError, match="no history.jsonl"):
    analysis.load_groups({"x": [str(tmp_path / "nope")]})
  notes = analysis.compare_groups(analysis.load_groups(
      {"twice": [groups["reinforce"][0]] * 2}))["groups"]["twice"]["notes"]
  assert notes == ["a workdir is listed more than once"]


def test_plot_topk_groups(groups, tmp_path):
  loaded = analysis.load_groups(groups)
  path = str(tmp_path / "fig6.png")
  fig = plots.plot_topk_groups({n: [r["rows"] for r in rs] for n, rs in loaded.runs.items()},
                               path=path)
  assert isinstance(fig, Figure) and len(fig.axes) == 3
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  # the single-run plot draws unique top-k too: its top-1 line ends at the unique best
  fig = plots.plot_topk({"reinforce": loaded.runs["reinforce"][0]["rows"]}, ks=(5,))
  ys = [l.get_ydata() for l in fig.axes[0].lines]
  assert ys[-1][-1] == pytest.approx(0.435)


def _cli(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "compare.py"), *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli(groups, tmp_path):
  out_json, out_png = tmp_path / "cmp.json", tmp_path / "cmp.png"
  res = _cli(f"--group=reinforce={','.join(groups['reinforce'])}",
             f"--group=random={groups['random'][0]}", f"--json={out_json}", f"--plot={out_png}")
  assert res.returncode == 0, res.stderr
  assert "| reinforce | 3 | 0.8750 ±" in res.stdout and "| random | 1 (one run) |" in res.stdout
  data = json.load(open(out_json))
  assert data["budget"] == 8 and data["metric"]["name"] == "val_accuracy"
  assert data["groups"]["reinforce"]["stats"]["top1_mean_reward"]["values"] == pytest.approx(
      [0.775, 0.875, 0.975])
  res = _cli(f"--group=reinforce={','.join(groups['reinforce'])}", "--best_of_samples")
  assert res.returncode == 0 and "| reinforce | 3 | 0.9000 ±" in res.stdout, res.stderr
  assert open(out_png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  # the old --workdirs (each workdir a group of one run); mismatched metrics: one line naming
  # the flag and both groups
  ppl = _write(str(tmp_path / "p0"), _seed_rows(0.5), metric=base.PERPLEXITY)
  res = _cli(f"--workdirs={groups['reinforce'][0]},{ppl}")
  assert res.returncode == 2 and not res.stdout
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: --workdirs: the metrics differ")
  assert f"group {groups['reinforce'][0]!r}" in lines[0] and f"group {ppl!r}" in lines[0]


def test_dynamics_counts_repeats_concentration_and_failures_per_quarter():
  # 8 children: a spread-out first half (two positions, 4 distinct vectors), then a collapse onto
  # one vector sampled 4 times, one of them failed.
  rows = [_row(0, (0, 0), 0.1), _row(1, (1, 1), 0.2), _row(2, (0, 1), 0.3), _row(3, (1, 0), 0.4),
          _row(4, (1, 1), 0.9), _row(5, (1, 1), 0.9), _row(6, (1, 1), 0.0, failed=True),
          _row(7, (1, 1), 0.8)]
  steps = [{"step": s, "entropy": e} for s, e in enumerate((2.0, 2.0, 0.5, 0.1))]
  d = tables.dynamics(rows, steps, parts=2)
  assert [(p["first"], p["last"]) for p in d] == [(0, 3), (4, 7)]
  assert d[0]["unique_share"] == 1.0 and d[0]["repeat_share"] == 0.0
  assert d[0]["mode_share"] == 0.5                 # each position: two 0s, two 1s
  assert d[1]["unique_share"] == 0.25 and d[1]["mode_share"] == 1.0
  assert d[1]["repeat_share"] == 1.0               # (1, 1) was already sampled in the first half
  assert d[1]["failed_share"] == 0.25
  assert d[1]["mean_reward"] == pytest.approx((0.9 + 0.9 + 0.0 + 0.8) / 4)
  assert d[0]["entropy"] == 2.0 and d[1]["entropy"] == pytest.approx(0.3)


def test_compare_dynamics_flag_prints_a_table_per_group(groups):
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "compare.py"), "--dynamics",
       "--group", "reinforce=" + ",".join(groups["reinforce"]), "--group",
       "random=" + ",".join(groups["random"])],
      capture_output=True, text=True, check=True).stdout
  assert "**reinforce** (3 runs; mean over runs)" in out and "**random** (1 run;" in out
  assert "| 0-1 |" in out and "| 6-7 |" in out and "mode share" in out


def test_a_reward_constant_scores_perplexity_runs_again_on_one_scale(tmp_path):
  def rows(rewards_and_ppls):
    out = []
    for i, (reward, ppl) in enumerate(rewards_and_ppls):
      r = _row(i, (i,), reward, failed=ppl is None)
      r.pop("val_accuracy")
      r["val_ppl"] = ppl
      out.append(r)
    return out
  # A search whose rewards were floored (0 for ppl 25) and one with plain 80 / ppl^2.
  a = _write(str(tmp_path / "a"), rows([(0.0, 25.0), (0.6, 10.0), (0.0, None), (0.0, 40.0)]),
             metric=base.PERPLEXITY)
  b = _write(str(tmp_path / "b"), rows([(0.2, 20.0), (0.05, 40.0), (0.8, 10.0), (0.0, None)]),
             metric=base.PERPLEXITY)
  loaded = analysis.load_groups({"a": [a], "b": [b]}, reward_constant=80.0)
  assert [r["reward"] for r in loaded.runs["a"][0]["rows"]] == [0.128, 0.8, 0.0, 0.05]
  assert [r["reward"] for r in loaded.runs["b"][0]["rows"]] == [0.2, 0.05, 0.8, 0.0]
  plain = analysis.load_groups({"a": [a]})
  assert [r["reward"] for r in plain.runs["a"][0]["rows"]] == [0.0, 0.6, 0.0, 0.0]
  with pytest.raises(analysis.CompareError, match="rescores perplexities"):
    analysis.load_groups({"x": [_write(str(tmp_path / "x"), _seed_rows(0.9))]},
                         reward_constant=80.0)


def test_a_weight_sharing_search_ranks_by_its_derive_rows(tmp_path):
  # controller-step rows (one minibatch each) score higher than the derive rows (whole validation
  # set): the top-k and the best must be the derive rows', the counts every row's
  steps = [{**_row(i, (i,), 0.9 + i / 100), "evaluation": "shared"} for i in range(4)]
  derive = [{**_row(4 + i, (10 + i,), r), "evaluation": "derive"}
            for i, r in enumerate((0.5, 0.7, 0.6, 0.7))]
  derive[3]["tokens"] = derive[1]["tokens"]  # one architecture derived twice counts once
  rows = steps + derive
  s = analysis.summarize(rows, ks=(1, 2))
  assert s["ranked_by"] == "derive" and s["architectures"] == 8
  assert s["top1_mean_reward"] == pytest.approx(0.7)
  assert s["top2_mean_reward"] == pytest.approx(0.65)
  assert s["best_description"] == derive[1]["description"]
  assert s["mean_reward_first_quarter"] == pytest.approx(np.mean([0.9, 0.91]))
  assert "ranked_by" not in analysis.summarize(steps, ks=(1,))  # an exact search: every row
  shared = _write(str(tmp_path / "shared"), rows, m=4)
  result = analysis.compare_groups(analysis.load_groups({"shared": [shared]}))
  run = result["groups"]["shared"]["runs"][0]
  assert run["best_reward"] == pytest.approx(0.7) and run["ranked_by"] == "derive"
  assert "Weight-sharing searches (shared): top-k and best from their derive rows" in (
      tables.comparison_markdown(result))


def test_the_planted_case_a_resampled_architecture_is_valued_at_its_mean(tmp_path):
  # A sampled twice (0.9, then 0.1: one lucky training), B once (0.6): A's value is 0.5, so the
  # fair top-1 is B's 0.6 and top-5 the mean of 0.6 and 0.5; the best of A's samples would say 0.9.
  rows = [_row(0, (1,), 0.9), _row(1, (1,), 0.1), _row(2, (2,), 0.6)]
  planted = _write(str(tmp_path / "planted"), rows)
  res = _cli(f"--workdirs={planted}")
  assert res.returncode == 0, res.stderr
  line = next(l for l in res.stdout.splitlines() if l.startswith(f"| {planted} |"))
  assert line.startswith(f"| {planted} | 1 (one run) | 0.6000 | 0.5500 | 0.5500 |"), line
  res = _cli(f"--workdirs={planted}", "--best_of_samples")
  line = next(l for l in res.stdout.splitlines() if l.startswith(f"| {planted} |"))
  assert line.startswith(f"| {planted} | 1 (one run) | 0.9000 | 0.7500 | 0.7500 |"), line


def test_a_reward_constant_rescores_even_an_astronomical_perplexity(tmp_path):
  rows = [_row(0, (1,), 0.5), _row(1, (2,), 0.1)]
  rows[0]["val_ppl"], rows[1]["val_ppl"] = 10.0, 1e200   # 1e200 ** 2 overflows a float
  w = _write(str(tmp_path / "p"), rows, metric=base.PERPLEXITY)
  loaded = analysis.load_groups({"p": [w]}, reward_constant=80.0)
  assert [r["reward"] for r in loaded.runs["p"][0]["rows"]] == [pytest.approx(0.8), 0.0]
