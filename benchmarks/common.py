"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``)."""

import importlib.util
import json
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def load_experiment(name: str, arg: str | None = None):
  """``get_config(arg)`` of ``experiments/configs/NAME.py``."""
  path = os.path.join(ROOT, "experiments", "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def write_json(path: str, obj) -> None:
  """Writes ``obj`` to ``path`` (nothing if ``path`` is empty), creating the folder."""
  if not path:
    return
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f, indent=1)
