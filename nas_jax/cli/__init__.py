"""The command lines: ``nas-jax search | train-child | train-lm | compare | report | seeds |
shared-seeds | ranking`` (installed by pip), the same as ``python experiments/<command>.py`` in a
clone.

``--config`` takes a config file's path, or the name of one of the packaged configs
(``nas_jax.configs.NAMES``, e.g. ``--config cnn_digits:quick``), from any directory.

Only the standard library is imported here: the supervisor of a multi-process search stays small.
"""

from __future__ import annotations

import difflib
import importlib
import os
import signal
import sys
from typing import Callable

from nas_jax.configs import NAMES as CONFIG_NAMES

COMMANDS = {"search": "search", "train-child": "train_child", "train-lm": "train_lm",
            "compare": "compare", "report": "report", "shared-seeds": "shared_seeds",
            "seeds": "seeds", "ranking": "ranking"}
_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def resolve_config_names(argv: list[str]) -> list[str]:
  """``argv`` with ``--config NAME[:ARG]`` (a packaged config's name, not a path) replaced by the
  path of ``nas_jax/configs/NAME.py`` (``--config=...`` as well). A packaged name wins over a
  local file or folder of that name; a path (with a ``/`` or ending in ``.py``) stays a path."""

  def resolve(value: str) -> str:
    name, sep, arg = value.partition(":")
    path = os.path.join(_CONFIGS, f"{name}.py")
    if os.sep in name or name.endswith(".py") or not os.path.isfile(path):
      return value
    return path + sep + arg

  out, args = [], iter(argv)
  for a in args:
    if a == "--config":
      out += [a, resolve(next(args, ""))]
    elif a.startswith("--config="):
      out.append("--config=" + resolve(a[len("--config="):]))
    else:
      out.append(a)
  return out


def config_hint(value: str) -> str:
  """What to say of a ``--config`` value that names no file: the nearest packaged name, and all."""
  name = value.partition(":")[0]
  near = difflib.get_close_matches(os.path.basename(name).removesuffix(".py"), CONFIG_NAMES, n=1)
  return ((f"did you mean {near[0]}? " if near else "")
          + f"packaged configs: {', '.join(CONFIG_NAMES)} (NAME or NAME:ARG), or a path to a .py "
          "file")


CONFIG_HELP = ("Experiment config: a packaged config's name (NAME[:ARG], one of "
               f"{', '.join(CONFIG_NAMES)}) or the path of a config file (FILE.py[:ARG]); "
               "override fields with --config.FIELD=VALUE.")

_HELP_FLAGS = ("--help", "-help", "-h", "--helpshort", "-?")


def show_help(module_name: str, doc: str | None) -> None:
  """``nas-jax COMMAND --help``: the command's docstring and its flags with their help, exit 0.

  (absl's ``--help`` lists the flags of the main module only, which these commands are not.)
  """
  if not any(a in _HELP_FLAGS for a in sys.argv[1:]):
    return
  from absl import flags  # pylint: disable=import-outside-toplevel  (the supervisor stays small)
  print((doc or "").strip() + "\n")
  print(flags.FLAGS.module_help(module_name).replace(f"{module_name}:", "flags:", 1))
  print("\n(--helpfull: every flag, absl's and JAX's included)")
  sys.exit(0)


def exit_interrupted(message: str = "interrupted; rerun the same command to resume") -> None:
  """Ctrl-C's end: one line on stderr and exit status 130. A further Ctrl-C while the process
  exits (files closing, atexit hooks) is ignored, so it cannot end in a traceback or exit -2."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  print(message, file=sys.stderr)
  sys.exit(130)


def run_app(main: Callable[[list[str]], None], resumable: bool = True,
            flags_parser: Callable[[list[str]], list[str]] | None = None) -> None:
  """``absl.app.run(main)`` with this package's flag errors (:func:`parse_flags`) and Ctrl-C
  anywhere as one line and exit 130 (:func:`exit_interrupted`)."""
  from absl import app  # pylint: disable=import-outside-toplevel
  try:
    app.run(main, flags_parser=flags_parser or parse_flags)
  except KeyboardInterrupt:
    exit_interrupted("interrupted; rerun the same command to resume" if resumable
                     else "interrupted")


def fail(message: str, code: int = 2) -> None:
  """One line on stderr, ``error: ...``, and exit status ``code`` (2: bad input)."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def _last_line(e: BaseException) -> str:
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  return lines[-1] if lines else type(e).__name__


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parser with one-line errors and exit status 2: a bad flag, a ``--config`` that
  names no file (with the nearest packaged name), a config file that fails to load, an override
  that names no field."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  value = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if value is None and "--config" in argv[:-1]:
    value = argv[argv.index("--config") + 1]
  try:
    argv = flags.FLAGS(argv)
    if "config" in flags.FLAGS and flags.FLAGS["config"].value is not None:
      flags.FLAGS["config"].value.keys()  # a config file that failed to load raises when used
    return argv
  except (AttributeError, KeyError) as e:  # ml_collections: an override names no field
    msg = str(e.args[0] if e.args else e).replace("\\n", " ").replace("\\'", "'").strip("'\"")
    fail(f"a --config override names no config field: {msg}")
  except SyntaxError as e:  # the config file is not Python
    fail(f"flag --config: {e.filename}, line {e.lineno}: {e.msg}; fix the config file")
  except OSError as e:  # no such config file
    fail(f"flag --config: cannot load the config file: {_last_line(e)}; "
         f"{config_hint(value or '')}")
  except flags.Error as e:  # a bad value, or the config file raised (its traceback)
    lines = str(e).strip().splitlines()
    fail(f"{lines[0]} {_last_line(e)}" if len(lines) > 1 else str(e))
  return argv


def main(argv: list[str] | None = None) -> None:
  """``nas-jax COMMAND [flags]``: runs COMMAND's entry point with the remaining flags."""
  argv = sys.argv if argv is None else argv
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(f"usage: nas-jax {{{'|'.join(COMMANDS)}}} [flags]   (nas-jax COMMAND --help for its "
          "flags)")
    sys.exit(0 if len(argv) >= 2 else 2)
  if argv[1] not in COMMANDS:
    print(f"error: nas-jax: unknown command {argv[1]!r}; one of {', '.join(COMMANDS)}",
          file=sys.stderr)
    sys.exit(2)
  sys.argv = [f"{os.path.basename(argv[0])} {argv[1]}", *argv[2:]]
  importlib.import_module(f"nas_jax.cli.{COMMANDS[argv[1]]}").run()
