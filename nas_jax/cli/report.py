"""Writes a markdown report with plots of a search's workdir.

  python experiments/report.py --workdir /tmp/nas_digits --random_workdir /tmp/nas_digits_random

Writes ``report.md``, ``rewards.png``, ``best.png`` (for a space with a diagram) and (with
``--random_workdir``) ``topk.png`` into ``--out`` (default: the workdir); nothing else there is
touched. The space and the children's metric come from the workdir's ``config.json``. The
summary's top-k means count unique architectures (the paper's Fig. 6); when the workdir has
``retrain/metrics.json`` (``experiments/train_child.py``), a "Retrained from scratch" table shows
each retrained child's search reward, validation and test accuracy, parameters and FLOPs. See
``nas_jax/tools/report.py``.
"""

import os
import sys

import matplotlib

matplotlib.use("Agg")

from absl import flags  # pylint: disable=g-import-not-at-top

from nas_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Search workdir (history.jsonl, steps.jsonl, "
                               "config.json) to report on.")
_RANDOM = flags.DEFINE_string("random_workdir", None, "Optional second search to compare with "
                              "(e.g. random search at the same budget): top-k plot, second column.")
_OUT = flags.DEFINE_string("out", None, "Output folder for report.md and the PNGs (created if "
                           "needed); default: --workdir.")
_SPACE_MODULE = flags.DEFINE_string(
    "space_module", None, "A module of your own (importable, e.g. my_project.spaces) whose search "
    "space classes the workdir names; nothing is imported because config.json names it.")


def _fail(msg: str):
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(2)


def _check_workdir(flag: str, path: str) -> None:
  if not os.path.isdir(path):
    _fail(f"--{flag}: {path} is not a directory; pass the --workdir of a search "
          "(experiments/search.py)")
  if not os.path.isfile(os.path.join(path, "history.jsonl")):
    _fail(f"--{flag}: no history.jsonl in {path}; run experiments/search.py with --workdir={path} "
          "first")


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; use --workdir, --random_workdir, --out")
  if not _WORKDIR.value:
    _fail("--workdir is required: the workdir of a search (experiments/search.py --workdir)")
  _check_workdir("workdir", _WORKDIR.value)
  if _RANDOM.value:
    _check_workdir("random_workdir", _RANDOM.value)
  out = _OUT.value
  if out and os.path.exists(out) and not os.path.isdir(out):
    _fail(f"--out: {out} exists and is not a directory; pass a folder")
  from nas_jax.tools import analysis, report  # pylint: disable=g-import-not-at-top
  for flag, path in (("workdir", _WORKDIR.value), ("random_workdir", _RANDOM.value)):
    if path and not analysis.load_history(path):
      _fail(f"--{flag}: {os.path.join(path, 'history.jsonl')} has no rows; let the search "
            "evaluate at least one architecture")
  path = report.write_report(_WORKDIR.value, _RANDOM.value or None, out, _own_spaces())
  print(path)


def _own_spaces() -> list[type]:
  """The search space classes of ``--space_module`` (imported because the user named it)."""
  if not _SPACE_MODULE.value:
    return []
  import importlib  # pylint: disable=import-outside-toplevel
  import inspect  # pylint: disable=import-outside-toplevel
  from nas_jax.spaces import base  # pylint: disable=import-outside-toplevel
  try:
    module = importlib.import_module(_SPACE_MODULE.value)
  except ImportError as e:
    _fail(f"--space_module {_SPACE_MODULE.value}: cannot import it ({e}); give an importable "
          "module (on PYTHONPATH)")
  return [c for _, c in inspect.getmembers(module, inspect.isclass)
          if issubclass(c, base.SearchSpace) and c is not base.SearchSpace]


def _parse_flags(argv):
  """absl's parser, with a one-line error and exit status 2 for bad flags."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e))


def run():
  cli.show_help(__name__, __doc__)
  cli.run_app(main, resumable=False, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
