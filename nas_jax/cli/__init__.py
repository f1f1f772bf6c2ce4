"""The command lines: ``nas-jax search | train-child | train-lm | compare | report | seeds |
shared-seeds`` (installed by pip), the same as ``python experiments/<command>.py`` in a clone.

``--config`` takes a config file's path, or the name of one of the packaged configs
(``nas_jax.configs.NAMES``, e.g. ``--config cnn_digits:quick``), from any directory.

Only the standard library is imported here: the supervisor of a multi-process search stays small.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {"search": "search", "train-child": "train_child", "train-lm": "train_lm",
            "compare": "compare", "report": "report", "shared-seeds": "shared_seeds",
            "seeds": "seeds"}
_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def resolve_config_names(argv: list[str]) -> list[str]:
  """``argv`` with ``--config NAME[:ARG]`` (a packaged config's name, not a path) replaced by the
  path of ``nas_jax/configs/NAME.py`` (``--config=...`` as well)."""

  def resolve(value: str) -> str:
    name, sep, arg = value.partition(":")
    path = os.path.join(_CONFIGS, f"{name}.py")
    if os.sep in name or name.endswith(".py") or not os.path.isfile(path) or os.path.exists(name):
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
