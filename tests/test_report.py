"""The report: top-k curves, plots, the spaces' from_json and diagrams, report.md and its CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure

from nas_jax.core import history
from nas_jax.tools import analysis, plots, report
from nas_jax.spaces import base, cnn, rnn_cell

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _layer(fh, fw, nf, inputs, stride=1):
  return cnn.Layer(fh, fw, stride, stride, nf, tuple(inputs))


def _row(step, index, arch, space, reward, *, failed=False, **metrics):
  """A history row as nas_jax.core.search writes it."""
  return {"step": step, "index": index,
          "num_layers": len(arch.layers) if isinstance(arch, cnn.CNNArch) else arch.base,
          "tokens": [step, index], "arch": base.to_json(arch), "description": space.describe(arch),
          "reward": reward, "val_accuracy": metrics.pop("val_accuracy", 0.0),
          "val_accuracies": [], **metrics, "param_count": 1000 + index, "seconds": 0.1,
          "failed": failed, "error": "perplexity is not finite" if failed else ""}


def _write_workdir(path, rows, config, steps=None):
  os.makedirs(path)
  with open(os.path.join(path, "history.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  if steps is not None:
    with open(os.path.join(path, "steps.jsonl"), "w") as f:
      f.writelines(json.dumps(s) + "\n" for s in steps)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)


def _steps(rows, m, baseline=True):
  out = []
  for s in range(len(rows) // m):
    r = [x["reward"] for x in rows[s * m:(s + 1) * m]]
    out.append({"step": s, "num_layers": rows[s * m]["num_layers"], "children": m,
                "reward_mean": float(np.mean(r)), "reward_max": max(r), "entropy": 3.0,
                **({"baseline": 0.1 * s, "loss": 0.0} if baseline else {})})
  return out


def _config(searcher, space, m, steps):
  return {"search.searcher": searcher, "search_space.name": space,
          "search_space.class": {"cnn": "CNNSpace", "rnn_cell": "RNNCellSpace"}[space],
          "search.children_per_step": m, "search.num_steps": steps, "data.name": "digits",
          "child.epochs": 1, "seed": 0}


BEST_CNN = cnn.CNNArch((_layer(3, 3, 16, ()), _layer(5, 1, 24, (0,), stride=2),
                        _layer(1, 7, 32, (0, 1)), _layer(3, 5, 8, ())), 1, (2,))


def _cnn_rows(seed, best=False):
  rng = np.random.default_rng(seed)
  space = cnn.CNNSpace()
  rows = []
  for i in range(12):
    n = 2 if i < 6 else 3  # a depth change
    arch = cnn.CNNArch(tuple(_layer(3, 3, 8, (j - 1,) if j else ()) for j in range(n)))
    rows.append(_row(i // 4, i % 4, arch, space, float(rng.uniform(0.1, 0.8)),
                     val_accuracy=0.5))
  if best:
    rows[9] = _row(2, 1, BEST_CNN, space, 0.95, val_accuracy=0.983)
    rows[9]["num_layers"] = 3
  return rows


@pytest.fixture
def cnn_workdirs(tmp_path):
  main, rand = str(tmp_path / "reinforce"), str(tmp_path / "random")
  rows = _cnn_rows(0, best=True)
  _write_workdir(main, rows, _config("reinforce", "cnn", 4, 3), _steps(rows, 4))
  rrows = _cnn_rows(1)
  _write_workdir(rand, rrows, _config("random", "cnn", 4, 3), _steps(rrows, 4, baseline=False))
  return main, rand


@pytest.fixture
def cell_workdir(tmp_path):
  space = rnn_cell.RNNCellSpace(base=4)
  rng = np.random.default_rng(0)
  rows = []
  for i in range(10):
    nodes = tuple(rnn_cell.NodeOp(space.combinations[rng.integers(2)],
                                  space.activations[rng.integers(4)]) for _ in range(7))
    arch = rnn_cell.CellArch(nodes, rnn_cell.NodeOp("add", "tanh"), int(rng.integers(7)),
                             int(rng.integers(7)))
    failed = i == 3
    ppl = float(rng.uniform(10, 30))
    rows.append(_row(i // 2, i % 2, arch, space, 0.0 if failed else 80 / ppl ** 2, failed=failed,
                     **({} if failed else {"val_ppl": ppl, "train_ppl": ppl})))
  path = str(tmp_path / "cell")
  _write_workdir(path, rows, {**_config("reinforce", "rnn_cell", 2, 5), "search_space.base": 4},
                 _steps(rows, 2))
  return path, rows


def _images(md_text):
  return [line.split("](")[1].rstrip(")") for line in md_text.splitlines()
          if line.startswith("![")]


def _top_rows(md_text):
  """The rows of the top-architectures table."""
  section = md_text.split("## Top ")[-1].split("\n## ")[0]
  return [l for l in section.splitlines() if l.startswith("| ") and l[2].isdigit()]


def _check_png(path):
  assert os.path.getsize(path) > 1000
  with open(path, "rb") as f:
    assert f.read(8) == PNG_MAGIC


def test_unique_topk_curve_by_hand():
  # rows as the search writes them: tokens identify an architecture, failed children have reward 0
  rows = [{"tokens": [t], "reward": r, "failed": f}
          for t, r, f in ((0, 0.5, False), (1, 0.2, False), (0, 0.9, False), (2, 0.0, True),
                          (3, 0.7, False))]
  # architecture 0 sampled twice counts once (the mean of its rewards, 0.7; the best, 0.9, with
  # best_of_samples); the failed child is left out
  np.testing.assert_allclose(analysis.unique_topk_curve(rows, 1), [0.5, 0.5, 0.7, 0.7, 0.7])
  np.testing.assert_allclose(analysis.unique_topk_curve(rows, 2), [0.5, 0.35, 0.45, 0.45, 0.7])
  np.testing.assert_allclose(analysis.unique_topk_curve(rows, 10),
                             [0.5, 0.35, 0.45, 0.45, (0.7 + 0.2 + 0.7) / 3])
  np.testing.assert_allclose(analysis.unique_topk_curve(rows, 1, best_of_samples=True),
                             [0.5, 0.5, 0.9, 0.9, 0.9])
  np.testing.assert_allclose(analysis.unique_topk_curve(rows, 2, best_of_samples=True),
                             [0.5, 0.35, 0.55, 0.55, 0.8])
  assert analysis.unique_topk_curve([], 5).shape == (0,)
  with pytest.raises(ValueError):
    analysis.unique_topk_curve(rows, 0)


def test_report_cnn_pair(cnn_workdirs, tmp_path):
  main, rand = cnn_workdirs
  before = {p: open(os.path.join(main, p), "rb").read() for p in os.listdir(main)}
  out = str(tmp_path / "out")
  path = report.write_report(main, rand, out)
  assert path == os.path.join(out, "report.md")
  assert sorted(os.listdir(out)) == sorted(report.REPORT_FILES)
  assert {p: open(os.path.join(main, p), "rb").read() for p in os.listdir(main)} == before
  text = open(path).read()
  assert sorted(_images(text)) == ["best.png", "rewards.png", "topk.png"]
  for name in _images(text):
    _check_png(os.path.join(out, name))
  first = _top_rows(text)[0]
  assert cnn.CNNSpace().describe(BEST_CNN) in first and "0.9500" in first
  assert "| reinforce | random |" in text  # the summary's two columns
  assert "top15_mean_reward" in text and "unique architectures" in text
  assert "Retrained from scratch" not in text  # no retrain/metrics.json


def test_report_cell_default_out(cell_workdir):
  path, rows = cell_workdir
  before = set(os.listdir(path))
  md = report.write_report(path)
  assert md == os.path.join(path, "report.md")
  assert set(os.listdir(path)) - before == {"report.md", "rewards.png", "best.png"}
  text = open(md).read()
  assert sorted(_images(text)) == ["best.png", "rewards.png"]  # no second run: no top-k plot
  for name in _images(text):
    _check_png(os.path.join(path, name))
  best = max((r for r in rows if not r["failed"]), key=lambda r: r["reward"])
  top = _top_rows(text)
  assert len(top) == 9  # 10 rows, one failed
  assert best["description"] in top[0] and "val ppl" in text
  report.write_report(path)  # a second report overwrites its own files only
  assert set(os.listdir(path)) - before == {"report.md", "rewards.png", "best.png"}


def _star(fig):
  """The x, y and legend label of the gold star of a plot_rewards figure."""
  ax = fig.axes[0]
  (star,) = [c for c in ax.collections if c.get_label().startswith("best")]
  return tuple(star.get_offsets()[0]), star.get_label()


def test_the_star_of_a_weight_sharing_search_is_its_best_derived_architecture():
  rows = _cnn_rows(0)
  for i, r in enumerate(rows):
    r.update(failed=False, reward=0.1 * (i % 5), evaluation="shared" if i < 6 else "derive")
  rows[2]["reward"] = 0.99      # one lucky minibatch while the shared weights train
  rows[8]["reward"] = 0.7       # the best of the derive rows (whole validation set)
  assert _star(plots.plot_rewards(rows)) == ((8.0, 0.7), "best derived (0.7)")
  for r in rows:
    r.pop("evaluation")         # an exact search: every row ranks
  assert _star(plots.plot_rewards(rows)) == ((2.0, 0.99), "best (0.99)")


def test_figures_and_dispatch(tmp_path):
  from toy_space import MLPSpace  # pylint: disable=import-outside-toplevel
  rows = _cnn_rows(0, best=True)
  fig = plots.plot_rewards(rows, _steps(rows, 4))
  assert isinstance(fig, Figure)
  fig2 = Figure()
  ax = fig2.add_subplot()
  assert plots.plot_rewards(rows, None, ax=ax) is fig2
  assert isinstance(plots.plot_topk({"a": rows, "random": rows[:5]}), Figure)
  # a row, its arch JSON and a decoded arch all draw
  p = str(tmp_path / "a.png")
  report.draw_architecture(cnn.CNNSpace(), rows[9], path=p)
  _check_png(p)
  assert isinstance(report.draw_architecture(cnn.CNNSpace(), rows[9]["arch"]), Figure)
  assert isinstance(report.draw_architecture(rnn_cell.RNNCellSpace(), rnn_cell.NASCELL), Figure)
  assert isinstance(cnn.CNNSpace().diagram(BEST_CNN, title="t"), Figure)
  # a space without from_json / diagram (base.SearchSpace's defaults) has no diagram
  assert MLPSpace().diagram(rows[9]["arch"]) is None
  with pytest.raises(NotImplementedError):
    MLPSpace().from_json(rows[9]["arch"])
  with pytest.raises(ValueError, match="no diagram"):
    report.draw_architecture(MLPSpace(), rows[9])
  with pytest.raises(ValueError):
    report.draw_architecture(rnn_cell.RNNCellSpace(), rows[9])


def _cli(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "report.py"), *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli_missing_workdir(tmp_path):
  missing, out = tmp_path / "nope", tmp_path / "out"
  res = _cli(f"--workdir={missing}", f"--out={out}")
  assert res.returncode == 2
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: --workdir") and str(missing) in lines[0]
  assert not missing.exists() and not out.exists()
  empty = tmp_path / "empty"
  empty.mkdir()
  res = _cli(f"--workdir={empty}")
  assert res.returncode == 2 and "history.jsonl" in res.stderr
  assert len(res.stderr.strip().splitlines()) == 1 and os.listdir(empty) == []


def test_cli_writes_report(cnn_workdirs, tmp_path):
  main, rand = cnn_workdirs
  res = _cli(f"--workdir={main}", f"--random_workdir={tmp_path / 'nope'}")
  assert res.returncode == 2 and res.stderr.startswith("error: --random_workdir")
  assert "report.md" not in os.listdir(main)
  out = tmp_path / "out"
  res = _cli(f"--workdir={main}", f"--random_workdir={rand}", f"--out={out}")
  assert res.returncode == 0, res.stderr
  assert res.stdout.strip() == str(out / "report.md")
  assert sorted(os.listdir(out)) == sorted(report.REPORT_FILES)


def test_report_of_a_space_without_diagram(cnn_workdirs, tmp_path):
  main, _ = cnn_workdirs
  cfg_path = os.path.join(main, "config.json")
  cfg = json.load(open(cfg_path))
  json.dump({**cfg, "search_space.name": "toy"}, open(cfg_path, "w"))
  out = tmp_path / "out"
  text = open(report.write_report(main, out_dir=str(out))).read()
  assert sorted(os.listdir(out)) == ["report.md", "rewards.png"]
  assert "No diagram" in text and sorted(_images(text)) == ["rewards.png"]


def test_report_of_a_user_space_searched_under_a_cnn_config(tmp_path):
  # run_search(cfg, workdir, space=MLPSpace()) records the space searched (its module, class and
  # fields) in config.json, not the config's CNN section: the report rebuilds it, and it has no
  # diagram.
  from nas_jax import experiment  # pylint: disable=import-outside-toplevel
  from test_search import _NO_DATA, FakeEvaluator, fake_config  # pylint: disable=import-outside-toplevel
  from toy_space import MLPSpace  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "mlp"
  experiment.run_search(fake_config(steps=2), str(workdir), space=MLPSpace(), dataset=_NO_DATA,
                    evaluate_fn=FakeEvaluator())
  config = report.load_run(str(workdir))["config"]
  assert report.run_space(config, spaces=[MLPSpace]).space == MLPSpace()
  assert report.run_space(config).space is None   # a class of one's own is passed, never imported
  text = open(report.write_report(str(workdir))).read()
  assert "No diagram" in text and "best.png" not in text


def _json_round_trip(space, arch):
  return space.from_json(json.loads(json.dumps(base.to_json(arch))))


def test_cnn_from_json_round_trip():
  space = cnn.CNNSpace(predict_strides=True)
  rng = np.random.default_rng(0)
  archs = [BEST_CNN, cnn.CNNArch((_layer(1, 1, 4, ()),)),
           cnn.CNNArch((_layer(3, 3, 6, ()), _layer(3, 3, 6, (0,))), 3, (0, 1))]
  for num_layers in (1, 4, 7):
    plan = space.plan(num_layers)
    tokens = []
    for step in plan:
      if step.kind == base.CHOICE:
        tokens.append(rng.integers(space.decisions[step.decision].num_choices))
      else:
        tokens += list(rng.integers(2, size=step.layer))
    archs.append(space.decode(plan, np.array(tokens, np.int32)))
  for arch in archs:
    back = _json_round_trip(space, arch)
    assert back == arch and isinstance(back, cnn.CNNArch)
    assert all(isinstance(l.inputs, tuple) for l in back.layers)
    assert hash(back) == hash(arch)
  with pytest.raises(ValueError):
    space.from_json(base.to_json(rnn_cell.NASCELL))


def test_cell_from_json_round_trip():
  rng = np.random.default_rng(0)
  for space in (rnn_cell.RNNCellSpace(), rnn_cell.RNNCellSpace(base=4),
                rnn_cell.RNNCellSpace(base=2, combinations=("add", "mul", "max"),
                                      activations=rnn_cell.ACTIVATIONS)):
    plan = space.plan()
    archs = [space.decode(plan, np.array(
        [rng.integers(space.decisions[s.decision].num_choices) for s in plan], np.int32))
             for _ in range(5)]
    if space.base == 8:
      archs.append(rnn_cell.NASCELL)
    for arch in archs:
      back = _json_round_trip(space, arch)
      assert back == arch and isinstance(back, rnn_cell.CellArch)
      assert hash(back) == hash(arch)
      np.testing.assert_array_equal(space.encode(back), space.encode(arch))
  with pytest.raises(ValueError, match="base 4"):  # a cell of another base is not of this space
    rnn_cell.RNNCellSpace(base=4).from_json(base.to_json(rnn_cell.NASCELL))
  with pytest.raises(ValueError):
    rnn_cell.RNNCellSpace().from_json(base.to_json(BEST_CNN))


def test_importing_a_space_does_not_import_matplotlib():
  code = ("import sys; import nas_jax.spaces.cnn, nas_jax.spaces.rnn_cell; "
          "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
  assert res.returncode == 0, res.stderr


def _recorded_config(config, module, class_name, metric, higher_is_better, name):
  """``config`` as the search writes it now: the space's module and class and the metric."""
  return {**config, "search_space.name": name, "search_space.module": module,
          "search_space.class": class_name, "metric.name": metric,
          "metric.higher_is_better": higher_is_better}


def test_report_reads_space_and_metric_from_config(cell_workdir, tmp_path, monkeypatch):
  path, rows = cell_workdir
  cfg_path = os.path.join(path, "config.json")
  cfg = json.load(open(cfg_path))
  # a name the legacy table does not know, and the table emptied: only the recorded keys count
  json.dump(_recorded_config(cfg, "nas_jax.spaces.rnn_cell", "RNNCellSpace", "val_ppl", False,
                             "my_cells"), open(cfg_path, "w"))
  monkeypatch.setattr(history, "_BUILT_IN", {})
  rs = report.run_space(report.load_run(path)["config"])
  assert rs.space == rnn_cell.RNNCellSpace(base=4, name="my_cells") and rs.why == ""
  assert rs.metric == base.Metric("val_ppl", False) == base.PERPLEXITY
  drawn = []
  diagram = rnn_cell.RNNCellSpace.diagram

  def spy(self, arch, title=""):
    drawn.append((self, arch))
    return diagram(self, arch, title)

  monkeypatch.setattr(rnn_cell.RNNCellSpace, "diagram", spy)
  out = tmp_path / "out"
  text = open(report.write_report(path, out_dir=str(out))).read()
  best = min((r for r in rows if not r["failed"]), key=lambda r: r["val_ppl"])
  assert drawn == [(rs.space, rs.space.from_json(best))]
  assert sorted(os.listdir(out)) == ["best.png", "report.md", "rewards.png"]
  _check_png(out / "best.png")
  assert "val_ppl (lower is better)" in text and "| val ppl |" in text
  top = _top_rows(text)
  assert best["description"] in top[0]
  ppls = [float(r.split(" | ")[3]) for r in top]
  assert ppls == sorted(ppls) and len(ppls) == 9


def test_report_ranks_by_the_recorded_metric(cnn_workdirs, tmp_path):
  main, _ = cnn_workdirs
  rows = _cnn_rows(0, best=True)
  rows[3]["val_accuracy"] = 0.99  # a lower reward (0.55) but the best accuracy
  cfg = json.load(open(os.path.join(main, "config.json")))
  path = str(tmp_path / "acc")
  _write_workdir(path, rows, _recorded_config(cfg, "nas_jax.spaces.cnn", "CNNSpace",
                                              "val_accuracy", True, "cnn"))
  text = open(report.write_report(path)).read()
  top = _top_rows(text)
  assert top[0].startswith("| 1 | 0.3 |") and "0.9900" in top[0]
  assert top[1].startswith("| 2 | 2.1 |") and "0.9500" in top[1]
  assert "The child with the best val accuracy: step 0, child 3" in text
  assert "| val accuracy |" in text and "best.png" in os.listdir(path)
  # the same history without a recorded metric ranks by reward
  cfg.pop("search_space.name")
  path2 = str(tmp_path / "nometric")
  _write_workdir(path2, rows, cfg)
  text = open(report.write_report(path2)).read()
  assert _top_rows(text)[0].startswith("| 1 | 2.1 |") and "No diagram" in text
  assert "Ranked by reward" in text


_USER_SPACE = '''
import dataclasses
from typing import NamedTuple
from matplotlib.figure import Figure
from nas_jax.spaces import base

class WidthArch(NamedTuple):
  widths: tuple

@dataclasses.dataclass(frozen=True)
class WidthSpace(base.SearchSpace):
  widths: tuple = (4, 8)
  name: str = "widths"

  def from_json(self, obj):
    return WidthArch(tuple(obj["widths"]))

  def diagram(self, arch, title=""):
    fig = Figure(figsize=(2, 2))
    fig.suptitle(title)
    fig.add_subplot().bar(range(len(arch.widths)), arch.widths)
    return fig
'''


def test_report_of_a_user_space_with_a_diagram(tmp_path, monkeypatch):
  # a user's space, passed to the report and named by module and class in config.json, is drawn
  # with no edit in nas_jax
  (tmp_path / "user_space_for_report.py").write_text(_USER_SPACE)
  monkeypatch.syspath_prepend(str(tmp_path))
  rows = [{"step": 0, "index": i, "num_layers": 2, "tokens": [0, i], "arch": {"widths": [4, w]},
           "description": f"4-{w}", "reward": 0.1 * i, "val_loss": 1.0 - 0.1 * i,
           "param_count": 10, "failed": False, "error": ""} for i, w in enumerate((4, 8, 8))]
  path = str(tmp_path / "run")
  _write_workdir(path, rows, {"search_space.name": "widths", "search_space.widths": [4, 8],
                              "search_space.module": "user_space_for_report",
                              "search_space.class": "WidthSpace", "metric.name": "val_loss",
                              "metric.higher_is_better": False, "search.searcher": "random"})
  import user_space_for_report  # pylint: disable=import-outside-toplevel  (the user's own)
  own = [user_space_for_report.WidthSpace]
  rs = report.run_space(report.load_run(path)["config"], own)
  assert rs.space.widths == (4, 8) and rs.metric == base.Metric("val_loss", False)
  text = open(report.write_report(path, spaces=own)).read()
  _check_png(os.path.join(path, "best.png"))
  assert "| val loss |" in text and _top_rows(text)[0].startswith("| 1 | 0.2 |")
  # config.json naming another module: that is not the class given, and nothing is imported
  cfg = json.load(open(os.path.join(path, "config.json")))
  json.dump({**cfg, "search_space.module": "no_such_module_xyz"},
            open(os.path.join(path, "config.json"), "w"))
  text = open(report.write_report(path, spaces=own)).read()
  assert "No diagram: no_such_module_xyz.WidthSpace is not a packaged space" in text


def _retrain_metrics(source):
  """``retrain/metrics.json`` as experiments/train_child.py writes it (its documented contract)."""
  child = lambda rank, desc, reward, val, test, params, flops: {
      "rank": rank, "tokens": [0, 1], "arch": {}, "description": desc, "search_reward": reward,
      "val_accuracy": val, "test_accuracy": test, "val_accuracies": [val], "param_count": params,
      "flops": flops, "seconds": 12.5}
  return {"config": {"child": {"epochs": 20, "momentum": 0.9}, "seed": 3, "top": 2},
          "source_workdir": source,
          "children": [child(2, "0:5x5x24<img", 0.81, 0.97, 0.962, 23456, 4_560_000),
                       child(1, "0:3x3x16<img", 0.95, 0.985, None, 1234, 789)]}


def test_report_shows_retrained_children(cnn_workdirs, tmp_path):
  main, _ = cnn_workdirs
  os.makedirs(os.path.join(main, "retrain"))
  with open(os.path.join(main, "retrain", "metrics.json"), "w") as f:
    json.dump(_retrain_metrics(main), f)
  out = tmp_path / "out"
  text = open(report.write_report(main, out_dir=str(out))).read()
  section = text.split("## Retrained from scratch")[1]
  assert "| rank | description | search reward | val acc | test acc | params | FLOPs |" in section
  rows = [l for l in section.splitlines() if l.startswith("| ") and l[2].isdigit()]
  assert rows == ["| 1 | `0:3x3x16<img` | 0.9500 | 0.9850 | – | 1,234 | 789 |",
                  "| 2 | `0:5x5x24<img` | 0.8100 | 0.9700 | 0.9620 | 23,456 | 4.56 M |"]
  assert "`child.epochs=20`" in section and "`seed=3`" in section
  assert "taken from the search" not in section  # source_workdir is this workdir
  assert sorted(os.listdir(out)) == ["best.png", "report.md", "rewards.png"]
  assert len(_top_rows(text)) == 10  # the top-architectures table is unchanged
  # another source, and a file that is not the contract's: said in the report, no crash
  with open(os.path.join(main, "retrain", "metrics.json"), "w") as f:
    json.dump(_retrain_metrics("/elsewhere"), f)
  assert "taken from the search in `/elsewhere`" in open(report.write_report(main)).read()
  with open(os.path.join(main, "retrain", "metrics.json"), "w") as f:
    f.write('{"children": 3}')
  text = open(report.write_report(main)).read()
  assert "retrain/metrics.json could not be read" in text


def test_a_module_that_a_workdir_names_is_never_imported(tmp_path):
  # config.json names a module planted beside the workdir; reporting (and compare, and the
  # retrain's space lookup) from inside that folder must not run it.
  from test_search import _NO_DATA, FakeEvaluator, fake_config  # pylint: disable=import-outside-toplevel
  from toy_space import MLPSpace  # pylint: disable=import-outside-toplevel
  from nas_jax import experiment  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "w"
  experiment.run_search(fake_config(steps=1), str(workdir), space=MLPSpace(), dataset=_NO_DATA,
                        evaluate_fn=FakeEvaluator(), progress=False)
  cfg = json.load(open(workdir / "config.json"))
  cfg["search_space.module"] = "planted"
  json.dump(cfg, open(workdir / "config.json", "w"))
  marker = tmp_path / "ran"
  (tmp_path / "planted.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                       "class MLPSpace: pass\n")
  for cmd in (["report", f"--workdir={workdir}"], ["compare", f"--workdirs={workdir}"]):
    out = subprocess.run([sys.executable, "-m", "nas_jax", *cmd], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert out.returncode == 0, out.stderr[-2000:]
    assert not marker.exists(), cmd
  assert "planted.MLPSpace is not a packaged space" in open(workdir / "report.md").read()
  # named on the command line, the user's module is imported: that is the user's choice
  out = subprocess.run([sys.executable, "-m", "nas_jax", "report", f"--workdir={workdir}",
                        "--space_module=planted"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=str(tmp_path)))
  assert out.returncode == 0 and marker.exists(), out.stderr[-2000:]


def test_a_weight_sharing_search_reports_its_epochs_not_controller_steps():
  cfg = {"shared.enabled": True, "shared.epochs": 3, "search.num_steps": 16,
         "search.children_per_step": 2}
  rows = [{"step": s, "index": 0, "evaluation": "shared"} for s in range(2)]
  assert report._steps_done({"rows": rows, "config": cfg}) == "2 of 3 epochs, derive not yet"  # pylint: disable=protected-access
  rows += [{"step": 2, "index": 0, "evaluation": "shared"},
           {"step": 3, "index": 0, "evaluation": "derive"}]
  assert report._steps_done({"rows": rows, "config": cfg}) == "3 of 3 epochs, derive done"  # pylint: disable=protected-access
  assert report._steps_done({"rows": rows[:1], "config": {"search.num_steps": 16,  # pylint: disable=protected-access
                                                          "search.children_per_step": 1}}) == "1 of 16"
