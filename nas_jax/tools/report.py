"""The markdown report of a search's workdir (``experiments/report.py`` is the CLI).

:func:`write_report` writes ``report.md``: the config, ``analysis.summarize`` of each history (its
top-k over unique architectures), the curves of :mod:`nas_jax.tools.plots`, the best architecture
with the space's own diagram (``space.diagram(space.from_json(row["arch"]))``), the top
architectures and, when the workdir has ``retrain/metrics.json`` (``experiments/train_child.py``),
the top architectures retrained from scratch (:func:`load_retrain`).

The report never guesses what a run was: :func:`run_space` reads it from ``config.json``.
``search_space.module`` and ``search_space.class`` name the space's class, the other
``search_space.*`` fields build it, ``metric.name`` and ``metric.higher_is_better`` name the
children's score in the history rows. Workdirs written before those keys existed go through
:func:`nas_jax.tools.analysis.legacy_config_keys`, the one place that knows the built-in spaces'
names.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

from matplotlib.figure import Figure

from nas_jax.spaces import base
from nas_jax.core.history import (  # noqa: F401  (public here too)
    RunSpace, load_run, metric_value, run_space, top_architectures)
from nas_jax.tools import analysis
from nas_jax.tools import plots

REPORT_FILES = ("report.md", "rewards.png", "topk.png", "best.png")
"""Every file :func:`write_report` may write (nothing else in the output folder is touched):
``topk.png`` only with a second run, ``best.png`` only for a space with a diagram."""


def _metric_label(metric: base.Metric) -> str:
  return metric.name.replace("_", " ")


RETRAIN_FILE = os.path.join("retrain", "metrics.json")
"""Where ``experiments/train_child.py`` writes the retrained children, relative to the workdir."""

RETRAIN_CHILD_KEYS = ("rank", "tokens", "arch", "description", "search_reward", "val_accuracy",
                      "test_accuracy", "val_accuracies", "param_count", "flops", "seconds")
"""The keys of each of ``retrain/metrics.json``'s ``children``."""


def load_retrain(workdir: str) -> dict | None:
  """``workdir/retrain/metrics.json`` (the top architectures of the search trained again from
  scratch, by ``experiments/train_child.py``); None if there is none.

  The file is ``{"config": {...}, "source_workdir": str or null, "children": [{"rank",
  "description", "search_reward", "val_accuracy", "test_accuracy", "param_count", "flops", ...}]}``
  (:data:`RETRAIN_CHILD_KEYS`); the children come back sorted by rank. Missing values are None.

  Raises:
    ValueError: the file is not JSON or not of that form.
  """
  path = os.path.join(workdir, RETRAIN_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      data = json.load(f)
  except ValueError as e:
    raise ValueError(f"{path} is not JSON ({e})") from None
  if not (isinstance(data, dict) and isinstance(data.get("children"), list)
          and all(isinstance(c, dict) for c in data["children"])):
    raise ValueError(f"{path} has no list of children (a dict with a \"children\" list)")
  children = [{k: c.get(k) for k in RETRAIN_CHILD_KEYS} | c for c in data["children"]]
  children.sort(key=lambda c: (not isinstance(c["rank"], int), c["rank"]
                               if isinstance(c["rank"], int) else 0))
  config = data.get("config") if isinstance(data.get("config"), dict) else {}
  return {"config": config, "source_workdir": data.get("source_workdir"), "children": children}


# ----------------------------------------------------------------------------------------------
# The best architecture's diagram


def _title_of(row_or_arch, metric: base.Metric | None) -> str:
  if not (isinstance(row_or_arch, dict) and "arch" in row_or_arch):
    return "architecture"
  r = row_or_arch
  parts = []
  if "step" in r and "index" in r:
    parts.append(f"step {r['step']} child {r['index']}")
  if r.get("reward") is not None:
    parts.append(f"reward {r['reward']:.4f}")
  v = metric_value(r, metric)
  if v is not None:
    parts.append(f"{_metric_label(metric)} {v:.4g}")
  if r.get("param_count") is not None:
    parts.append(f"{r['param_count']:,} params")
  if r.get("failed"):
    parts.append("FAILED")
  return ", ".join(parts)


def draw_architecture(space: base.SearchSpace, row_or_arch, path: str | None = None, *,
                      title: str | None = None, metric: base.Metric | None = None) -> Figure:
  """The space's diagram of one architecture (``space.diagram``).

  Args:
    space: the search space (e.g. ``run_space(run["config"]).space``).
    row_or_arch: a history row, its ``arch`` (the JSON form; read by ``space.from_json``), or an
      architecture of the space.
    path: if given, the figure is saved there (PNG).
    title: default: the row's step, reward, ``metric`` and parameter count.
    metric: the children's score to put in the default title (e.g. ``base.ACCURACY``).

  Raises:
    ValueError: the space has no diagram (or no ``from_json`` to read a row with), or the
      architecture is not of that space.
  """
  if title is None:
    title = _title_of(row_or_arch, metric)
  arch = row_or_arch
  if isinstance(arch, dict) and "arch" in arch:
    arch = arch["arch"]
  if isinstance(arch, (dict, list)):
    try:
      arch = space.from_json(arch)
    except NotImplementedError:
      raise ValueError(f"no diagram: {type(space).__name__} has no from_json to read the "
                       "architecture with") from None
  fig = space.diagram(arch, title)
  if fig is None:
    raise ValueError(f"no diagram: {type(space).__name__}.diagram draws none")
  if path:
    fig.savefig(path, dpi=plots.DPI)
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


def _flops(v) -> str:
  if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
    return "–"
  for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(v) >= scale:
      return f"{v / scale:.3g} {unit}"
  return f"{v:.0f}"


def _number(v):
  """A finite number, or None (the retrain file's values may be null or missing)."""
  if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
    return None
  return v


def _flat(config: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in config.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _retrain_section(workdir: str) -> list[str]:
  """The "Retrained from scratch" section (``retrain/metrics.json``), or [] without the file."""
  try:
    data = load_retrain(workdir)
  except (OSError, ValueError) as e:
    return ["", "## Retrained from scratch", "", f"({RETRAIN_FILE} could not be read: {e}.)"]
  if data is None:
    return []
  md = ["", "## Retrained from scratch", ""]
  config = _flat(data["config"])
  shown = [f"`{k}={config[k]}`" for k in ("data.name", "child.epochs", "child.batch_size",
                                           "child.learning_rate", "seed", "split_seed")
           if k in config]
  intro = (f"The top architectures of the search trained again from scratch "
           f"(`experiments/train_child.py`, `{RETRAIN_FILE}`"
           + (f"; {', '.join(shown)}" if shown else "") + ").")
  source = data["source_workdir"]
  if source and os.path.realpath(source) != os.path.realpath(workdir):
    intro += f" They were taken from the search in `{source}`."
  md += [intro, ""]
  if not data["children"]:
    md.append("The file lists no children.")
    return md
  table = []
  for c in data["children"]:
    score = lambda v: _fmt(None if _number(v) is None else float(v))
    params = _number(c["param_count"])
    table.append([_fmt(c["rank"]), f"`{c.get('description') or ''}`",
                  score(c["search_reward"]), score(c["val_accuracy"]), score(c["test_accuracy"]),
                  _fmt(None if params is None else int(params)), _flops(c["flops"])])
  md.append(_md_table(["rank", "description", "search reward", "val acc", "test acc", "params",
                       "FLOPs"], table))
  return md


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
  if cfg.get("shared.enabled"):  # a weight-sharing search's steps are its epochs and the derive
    epochs = cfg.get("shared.epochs")
    done = len({r["step"] for r in rows})
    derived = any(r.get("evaluation") == "derive" for r in rows)
    return (f"{min(done, epochs or done)} of {epochs} epochs"
            + (", derive done" if derived else ", derive not yet"))
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


def _space_text(run: dict, rs: RunSpace) -> str:
  """The space's name and class, and the range of the rows' ``num_layers``."""
  name = run["config"].get("search_space.name") or rs.class_name or "?"
  parts = [rs.class_name] if rs.class_name and rs.class_name != name else []
  layers = sorted({r["num_layers"] for r in run["rows"] if r.get("num_layers") is not None})
  if layers:
    parts.append("num_layers " + (f"{layers[0]}–{layers[-1]}" if len(layers) > 1
                                  else f"{layers[0]}"))
  return name + (f" ({'; '.join(parts)})" if parts else "")


def _metric_text(rs: RunSpace) -> str:
  if rs.metric is None:
    return "– (not recorded: children rank by reward)"
  return f"{rs.metric.name} ({'higher' if rs.metric.higher_is_better else 'lower'} is better)"


def _config_rows(runs: list[dict], spaces: list[RunSpace]) -> list[tuple[str, list[str]]]:
  def epochs(run):  # the section that trains the children: shared weights, cell LMs or CNNs
    cfg = run["config"]
    section = ("shared" if cfg.get("shared.enabled") else
               "lm_child" if cfg.get("search_space.name") in ("rnn_cell", "enas_cell") else "child")
    if f"{section}.epochs" in cfg:
      return f"{section}: {cfg[f'{section}.epochs']}"
    found = [f"{k.rsplit('.', 1)[0]}: {v}" for k, v in sorted(cfg.items()) if k.endswith(".epochs")]
    return ", ".join(found) or None

  fields = [
      ("workdir", lambda r, s: f"`{r['workdir']}`"),
      ("searcher", lambda r, s: r["config"].get("search.searcher")),
      ("search space", _space_text),
      ("child metric", lambda r, s: _metric_text(s)),
      ("data", lambda r, s: r["config"].get("data.name")),
      ("epochs (config)", lambda r, s: epochs(r)),
      ("children per step", lambda r, s: r["config"].get("search.children_per_step")),
      ("steps done", lambda r, s: _steps_done(r)),
      ("architectures evaluated", lambda r, s: len(r["rows"])),
      ("seed", lambda r, s: r["config"].get("seed")),
  ]
  return [(name, [_fmt(fn(r, s)) for r, s in zip(runs, spaces)]) for name, fn in fields]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def _comparison_notes(runs: list[dict], spaces: list[RunSpace]) -> list[str]:
  """What differs between two runs besides the searcher."""
  (a, b), (sa, sb) = runs, spaces
  notes = []
  kind = lambda run, s: (run["config"].get("search_space.name"), s.module, s.class_name)
  if kind(a, sa) != kind(b, sb):
    notes.append(f"the two runs searched different spaces ({_space_text(a, sa)}, "
                 f"{_space_text(b, sb)})")
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
  return notes


def write_report(workdir: str, random_workdir: str | None = None,
                 out_dir: str | None = None, spaces: Sequence[type] = ()) -> str:
  """Writes ``report.md`` and its PNGs (``REPORT_FILES``) into ``out_dir`` (default ``workdir``).

  The space and the children's metric come from each workdir's ``config.json``
  (:func:`run_space`); children are ranked by that metric, and the best one is drawn by the
  space's ``diagram`` (a space without one is reported without a diagram).

  Args:
    workdir: a search workdir (``history.jsonl``; ``steps.jsonl`` and ``config.json`` optional).
    random_workdir: optionally a second search (e.g. random search at the same budget): a second
      column in the summary and ``topk.png``.
    out_dir: where the files go (created if needed); only the report's own files are written.
    spaces: space classes of one's own (not packaged) that the workdirs may name.

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
  spaces = [run_space(r["config"], spaces) for r in runs]
  labels = _labels(runs)
  md = [f"# Architecture search report: `{os.path.basename(os.path.normpath(workdir))}`", ""]
  md += _config_section(runs, spaces, labels)
  md += _curves_section(runs, labels, out_dir)
  top = top_architectures(analysis.ranking_rows(runs[0]["rows"]), 10, spaces[0].metric)
  md += _best_section(top, spaces[0], out_dir)
  md += _top_section(top, spaces[0])
  md += _retrain_section(workdir)
  md.append("")
  path = os.path.join(out_dir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(md))
  return path


def _config_section(runs, spaces, labels) -> list[str]:
  """The configuration of each run and the summary of each history (markdown lines)."""
  md = ["## Configuration", ""]
  md.append(_md_table([""] + labels, [[k] + v for k, v in _config_rows(runs, spaces)]))
  notes = _comparison_notes(runs, spaces) if len(runs) == 2 else []
  if notes:
    md += ["", "Note: " + "; ".join(notes) + "."]
  md += ["", "## Summary", "",
         "`nas_jax.tools.analysis.summarize` of each history. `top{k}_mean_reward` is the mean "
         "value of the k best unique architectures (deduplicated by tokens, as the paper's Fig. 6 "
         f"counts models; {analysis.VALUE_FAIR}):", ""]
  sums = [analysis.summarize(r["rows"], **({"metric": s.metric} if s.metric else {}))
          for r, s in zip(runs, spaces)]
  keys = [k for k in sums[0] if k != "best_description"]
  keys += [k for s in sums[1:] for k in s if k not in keys and k != "best_description"]
  md.append(_md_table(["metric"] + labels, [[k] + [_fmt(s.get(k)) for s in sums] for k in keys]))
  return md


def _curves_section(runs, labels, out_dir) -> list[str]:
  """``rewards.png`` of the first run and, with two runs, ``topk.png`` (markdown lines)."""
  main = runs[0]
  rows = main["rows"]
  fig = plots.plot_rewards(rows, main["steps"], title=f"Reward of each architecture ({labels[0]})")
  fig.savefig(os.path.join(out_dir, "rewards.png"), dpi=plots.DPI)
  md = ["", "## Rewards", "",
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
    plots.plot_topk({l: r["rows"] for l, r in zip(labels, runs)},
                    path=os.path.join(out_dir, "topk.png"),
                    title="Top-k unique architectures: mean value among the first n")
    md += ["", "## Top-k rewards vs architectures evaluated", "",
           f"For k = 1, 5, 15: the mean value of the k best unique architectures among the first "
           f"n sampled (as Fig. 6 of Zoph & Le, 2017: an architecture sampled twice counts once, "
           f"valued at the mean reward of its samples; failed children are left out); "
           f"{plots.style_legend(labels)}. The lower "
           f"panel is the difference {labels[0]} − {labels[1]}.", "", "![top-k](topk.png)"]
  return md


def _best_section(top, rs: RunSpace, out_dir) -> list[str]:
  """The best architecture, drawn by the space into ``best.png`` where it can (markdown lines)."""
  label = _metric_label(rs.metric) if rs.metric else None
  md = ["", "## Best architecture", ""]
  if not top:
    return md + ["Every child failed: there is no best architecture."]
  best = top[0]
  score = metric_value(best, rs.metric)
  md += [f"The child with the best {label or 'reward'}: step {best['step']}, "
         f"child {best['index']}: reward {best['reward']:.4f}"
         + (f", {label} {_fmt(score)}" if score is not None else "")
         + f", {best.get('param_count', 0):,} parameters.", "",
         f"`{best.get('description', '')}`", ""]
  why = rs.why
  if rs.space is not None:
    try:
      draw_architecture(rs.space, best, os.path.join(out_dir, "best.png"), metric=rs.metric)
      md.append("![best architecture](best.png)")
    except ValueError as e:  # no diagram, or a row the space cannot read
      why = str(e).removeprefix("no diagram: ")
  if why:  # e.g. a custom space: its description above is all there is
    md.append(f"(No diagram: {why}.)")
  return md


def _top_section(top, rs: RunSpace) -> list[str]:
  """The table of the top architectures (markdown lines)."""
  label = _metric_label(rs.metric) if rs.metric else None
  md = ["", f"## Top {len(top)} architectures", ""]
  if rs.metric:
    md.append(f"Ranked by {_metric_text(rs)}: `metric` in config.json.")
  else:
    md.append("Ranked by reward (config.json records no metric).")
  md.append("")
  table = []
  for i, r in enumerate(top):
    table.append([str(i + 1), f"{r['step']}.{r['index']}", _fmt(float(r["reward"]))]
                 + ([_fmt(metric_value(r, rs.metric))] if label else [])
                 + [_fmt(r.get("param_count")), f"`{r.get('description', '')}`"])
  md.append(_md_table(["#", "step.child", "reward"] + ([label] if label else [])
                      + ["params", "description"], table))
  return md
