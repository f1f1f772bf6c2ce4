"""Children spread over several local devices give the same search as one device.

The 8 devices are XLA's virtual CPU devices (``--xla_force_host_platform_device_count=8``), which
must be set before JAX starts, so the searches run in subprocesses of the real entry point.
"""

import json
import os
import subprocess
import sys

import pytest

from nas_jax import config as config_lib, executors

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _search(workdir, num_devices: int, device_count: int = 8):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={device_count}",
             JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "search.py"),
       "--config", "experiments/configs/cnn_digits.py:quick", f"--workdir={workdir}",
       "--compilation_cache_dir=", "--config.search.children_per_step=4",
       f"--config.child.num_devices={num_devices}"],
      capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in open(os.path.join(workdir, "history.jsonl"))]
  steps = [json.loads(line) for line in open(os.path.join(workdir, "steps.jsonl"))]
  return rows, steps


def test_eight_devices_give_the_same_trajectory_as_one(tmp_path):
  one, one_steps = _search(tmp_path / "one", num_devices=1)
  eight, eight_steps = _search(tmp_path / "eight", num_devices=0)   # 0 = all 8
  key = lambda r: (r["step"], r["index"], r["tokens"], r["reward"], r["param_count"])
  assert [key(r) for r in eight] == [key(r) for r in one]
  # The controller saw the same rewards, so it made the same updates.
  assert [s["loss"] for s in eight_steps] == [s["loss"] for s in one_steps]
  # Each step's 4 children ran on 4 different devices; the one-device run records none.
  assert {r["device"] for r in eight} == {f"cpu:{i}" for i in range(4)}
  assert all("device" not in r for r in one)


def test_more_devices_than_the_process_has_is_a_config_error():
  with pytest.raises(config_lib.ConfigError, match="config.child.num_devices"):
    executors.local_devices(1000)
