"""Children spread over several local devices give the same search as one device.

The 8 devices are XLA's virtual CPU devices (``--xla_force_host_platform_device_count=8``), which
must be set before JAX starts, so the searches run in subprocesses of the real entry point.
"""

import collections
import json
import os
import subprocess
import sys

import pytest

from nas_jax import config as config_lib, configs
from nas_jax.training import evaluators as executors

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _search(workdir, num_devices: int, device_count: int = 8):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={device_count}",
             JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "search.py"),
       "--config", "experiments/configs/cnn_digits.py:quick", f"--workdir={workdir}",
       "--config.search.children_per_step=4",
       f"--config.child.num_devices={num_devices}"],
      capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in open(os.path.join(workdir, "history.jsonl"))]
  steps = [json.loads(line) for line in open(os.path.join(workdir, "steps.jsonl"))]
  return rows, steps


@pytest.mark.slow
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


def test_a_repeated_architecture_goes_back_to_the_device_it_was_compiled_for():
  compiled_on = collections.OrderedDict()
  assert executors.assign_devices(["A", "B", "C", "D"], 8, compiled_on) == [0, 1, 2, 3]
  # Round-robin would put B on device 0 and A on device 1, compiling both again.
  assert executors.assign_devices(["B", "A"], 8, compiled_on) == [1, 0]
  # Two new children and a known one on 2 devices: the known one fits beside a new one.
  compiled_on = collections.OrderedDict()
  assert executors.assign_devices(["A", "B"], 2, compiled_on) == [0, 1]
  assert executors.assign_devices(["C", "E", "A"], 2, compiled_on) == [0, 1, 0]
  # A device busier by more than a compile loses the architecture to an idle one.
  compiled_on = collections.OrderedDict()
  executors.assign_devices(["A"], 2, compiled_on)
  assert executors.assign_devices(["A", "A", "A"], 2, compiled_on) == [0, 0, 1]
  assert compiled_on["A"] == {0, 1}


def test_assign_devices_remembers_a_bounded_number_of_architectures():
  compiled_on = collections.OrderedDict()
  executors.assign_devices(list(range(10)), 4, compiled_on, remember=5)
  assert list(compiled_on) == [5, 6, 7, 8, 9]


_VMAP_SCRIPT = """
import importlib.util, json, sys
import jax
from nas_jax import config as config_lib, experiment
from nas_jax.training import data as data_lib
from nas_jax.spaces import make_space
from nas_jax.spaces.cnn import CNNArch, Layer
spec = importlib.util.spec_from_file_location("cfg", "experiments/configs/cnn_digits.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
cfg = module.get_config("quick")
cfg.child.executor, cfg.child.epochs = "vmap", 2
data = data_lib.load(cfg.data, cfg.seed)
space = make_space(cfg.search_space)
archs = [CNNArch((Layer(3, 3, 1, 1, 8, ()), Layer(3, 5, 1, 1, 8, (0,)))),
         CNNArch((Layer(5, 3, 1, 1, 4, ()), Layer(1, 3, 1, 1, 4, ()))),
         CNNArch((Layer(1, 1, 1, 1, 8, ()), Layer(7, 7, 1, 1, 8, (0,))))]
keys = [jax.random.key(i) for i in range(3)]
out = {}
for n in (1, 2, 8):
  cfg.child.num_devices = n
  results = list(experiment.evaluator_of(config_lib.parse(cfg))(space, archs, data, keys))
  out[n] = [[r.reward, r.metrics["val_accuracies"], r.param_count, r.failed] for r in results]
json.dump(out, sys.stdout)
"""


@pytest.mark.slow
def test_vmap_children_split_over_devices_equal_one_device():
  # 3 children on 2 and on 8 devices: padded to 4 and 8, the padding's results dropped.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _VMAP_SCRIPT], capture_output=True, text=True,
                       timeout=600, cwd=ROOT, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads(out.stdout.strip().splitlines()[-1])
  assert len(results["1"]) == 3 and not any(r[3] for r in results["1"])
  assert len({tuple(r[1]) for r in results["1"]}) > 1   # distinct children, not one repeated
  assert results["2"] == results["1"]
  assert results["8"] == results["1"]


def _shared_search(workdir, config: str, num_devices: int):
  """A weight-sharing search of 8 architectures per minibatch and per controller step (cells
  with dropout: each device draws its cells' masks from their own keys)."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "search.py"),
       "--config", f"experiments/configs/{config}.py:quick", f"--workdir={workdir}",
       "--config.shared.children_per_batch=8", "--config.search.children_per_step=8",
       "--config.shared.batch_size=32", f"--config.shared.num_devices={num_devices}",
       *(["--config.lm_child.dropout=0.2"] if config.startswith("rnn") else [])],
      capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in open(os.path.join(workdir, "history.jsonl"))]
  steps = [json.loads(line) for line in open(os.path.join(workdir, "steps.jsonl"))]
  return rows, steps, out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("config", ["cnn_digits_shared", "rnn_ptb_shared_cpu"])
def test_a_shared_search_on_eight_devices_is_the_one_device_search(tmp_path, config):
  """8 architectures per minibatch, each on its 4 of the 32 examples (streams): on one device,
  or one per device with the gradients averaged across the 8. The same up to the order of
  floating-point sums: identical tokens, rewards within 1e-4 relative (accuracies exactly equal
  here; perplexities move in the 5th digit), training losses within 1e-5."""
  one, one_steps, _ = _shared_search(tmp_path / "one", config, 1)
  eight, eight_steps, log = _shared_search(tmp_path / "eight", config, 0)
  assert "weight sharing on 8 device(s): 8 architecture(s) per minibatch, 1 per device" in log
  assert len(eight) == len(one) == 2 * 2 * 8 + 3
  assert [r["tokens"] for r in eight] == [r["tokens"] for r in one]
  assert [r["reward"] for r in eight] == pytest.approx([r["reward"] for r in one], rel=1e-4)
  losses = lambda steps: [s["train_loss"] for s in steps if "train_loss" in s]
  assert losses(eight_steps) == pytest.approx(losses(one_steps), rel=1e-5)
  assert len(set(r["reward"] for r in one)) > 4   # the children differ: not one score repeated


def test_a_batch_that_the_children_cannot_split_is_a_config_error():
  cfg = configs.get_config("cnn_digits_shared", "quick")
  cfg.shared.children_per_batch = 3
  with pytest.raises(config_lib.ConfigError, match="config.shared.batch_size: the minibatch is "
                     "split among shared.children_per_batch=3"):
    config_lib.parse(cfg)


def test_more_shared_devices_than_the_process_has_is_a_config_error():
  from nas_jax.training import shared  # pylint: disable=import-outside-toplevel
  with pytest.raises(config_lib.ConfigError, match="config.shared.num_devices: 1000 asked for"):
    shared.devices(shared.SharedConfig(num_devices=1000))


@pytest.mark.slow
def test_the_shared_devices_benchmark_runs_on_two_virtual_devices(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "shared_devices.py"),
                        "--steps=1", f"--json={tmp_path / 'r.json'}"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads((tmp_path / "r.json").read_text())
  assert [r["devices"] for r in result["rows"]] == [1, 2]
  assert all(r["children_per_batch"] == 2 and r["train_step_ms"] > 0 for r in result["rows"])
  assert out.stdout.count("| 2 |") == 2   # one table row per device count
