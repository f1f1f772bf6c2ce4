"""TensorBoard scalars (tensorboardX), read back with tensorboardX's own event-file reader."""

import glob
import os
import subprocess
import sys

import pytest

from nas_jax.spaces import base
from nas_jax.core import summaries

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_scalars(logdir):
  """{tag: [(step, value)]} from the event files (the protobuf records tensorboardX wrote)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  import struct  # pylint: disable=import-outside-toplevel
  out = {}
  for path in sorted(glob.glob(f"{logdir}/events.out.tfevents.*")):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for v in event.summary.value:
        value = v.simple_value if not v.HasField("tensor") else (
            b"".join(v.tensor.string_val).decode())
        out.setdefault(v.tag, []).append((event.step, value))
  return out


def _row(reward, acc=None, ppl=None, failed=False):
  r = {"reward": reward, "failed": failed}
  if acc is not None:
    r["val_accuracy"] = acc
  if ppl is not None:
    r["val_ppl"] = ppl
  return r


def test_cnn_step_scalars():
  step = {"reward_mean": 0.5, "reward_max": 0.9, "entropy": 3.0, "loss": -0.1, "baseline": 0.4,
          "grad_norm": 0.2, "controller_seconds": 0.01, "children_seconds": 12.0}
  children = [_row(0.9, acc=0.96), _row(0.1, acc=0.46), _row(0.0, failed=True)]
  s = summaries.step_scalars(step, children, best_reward=0.95, children_per_hour=900.0)
  assert s["controller/loss"] == -0.1 and s["controller/baseline"] == 0.4
  assert s["reward/mean"] == 0.5 and s["reward/max"] == 0.9 and s["reward/best_so_far"] == 0.95
  assert s["child/val_accuracy_mean"] == 0.71 and s["child/val_accuracy_max"] == 0.96
  assert s["child/failed"] == 1.0
  assert s["speed/children_per_hour"] == 900.0
  assert "child/val_ppl_min" not in s


def test_random_search_and_language_model_children():
  # Random search has no loss/baseline; LM children report perplexities; a NaN is left out.
  step = {"reward_mean": 0.1, "reward_max": 0.2, "entropy": 5.0, "baseline": float("nan")}
  children = [_row(0.2, ppl=10.0), _row(0.1, ppl=20.0), _row(0.05, ppl=40.0)]
  s = summaries.step_scalars(step, children, best_reward=None, children_per_hour=None,
                             metric=base.PERPLEXITY)
  assert "controller/loss" not in s and "controller/baseline" not in s
  assert s["child/val_ppl_median"] == 20.0 and s["child/val_ppl_min"] == 10.0
  assert "child/val_accuracy_mean" not in s and "reward/best_so_far" not in s


def test_writer_writes_event_files_tensorboard_reads(tmp_path):
  w = summaries.Writer(str(tmp_path))
  w.write_step(0, {"reward/mean": 0.25, "controller/loss": 1.5})
  w.write_step(1, {"reward/mean": 0.75})
  w.close()
  scalars = _read_scalars(tmp_path / "tensorboard")
  assert scalars["reward/mean"] == [(1, 0.25), (2, 0.75)]
  assert scalars["controller/loss"] == [(1, 1.5)]


def test_a_search_writes_one_point_per_controller_step(tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  from nas_jax import experiment  # pylint: disable=import-outside-toplevel
  from test_search import _NO_DATA, FakeEvaluator, fake_config  # pylint: disable=import-outside-toplevel
  from toy_space import MLPSpace  # pylint: disable=import-outside-toplevel
  experiment.run_search(fake_config(steps=3), str(tmp_path / "on"), space=MLPSpace(), dataset=_NO_DATA,
                    evaluate_fn=FakeEvaluator())
  steps = [json.loads(line) for line in open(tmp_path / "on" / "steps.jsonl")]
  scalars = _read_scalars(tmp_path / "on" / "tensorboard")
  text = [v for tag, points in scalars.items() if tag.startswith("config") for _, v in points]
  assert len(text) == 1 and "| search.num_steps | 3 |" in text[0] and "| seed | 0 |" in text[0]
  for tag, key in (("reward/mean", "reward_mean"), ("controller/loss", "loss"),
                   ("controller/baseline", "baseline"), ("controller/entropy", "entropy")):
    assert [s for s, _ in scalars[tag]] == [1, 2, 3]
    assert [v for _, v in scalars[tag]] == pytest.approx([r[key] for r in steps], rel=1e-6)
  assert len(scalars["speed/children_per_hour"]) == 3
  assert all(v > 0 for _, v in scalars["speed/children_per_hour"])
  # The fake child's accuracy is its reward - 0.01.
  assert [v for _, v in scalars["child/val_accuracy_mean"]] == pytest.approx(
      [r["reward_mean"] - 0.01 for r in steps], rel=1e-5)
  cfg = fake_config(steps=1)
  cfg.search.tensorboard = False
  experiment.run_search(cfg, str(tmp_path / "off"), space=MLPSpace(), dataset=_NO_DATA,
                    evaluate_fn=FakeEvaluator())
  assert not (tmp_path / "off" / "tensorboard").exists()


def test_writer_does_not_import_an_installed_torch(tmp_path):
  """tensorboardX imports PyTorch where it is installed (~350 MB resident); the Writer keeps it
  out, and torch stays importable afterwards. A stand-in torch package shows each import."""
  fake = tmp_path / "site" / "torch"
  fake.mkdir(parents=True)
  (fake / "__init__.py").write_text("print('torch imported')\nTensor = object\n")
  code = ("import sys; from nas_jax.core import summaries; w = summaries.Writer(sys.argv[1]); "
          "w.write_step(0, {'a': 1.0}); w.close(); print('after writer'); import torch")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), ROOT]))
  out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "w")], capture_output=True,
                       text=True, env=env, check=True, cwd=str(tmp_path))
  assert out.stdout.split() == ["after", "writer", "torch", "imported"], out.stdout + out.stderr
  assert glob.glob(str(tmp_path / "w" / summaries.SUBDIR / "events.out.tfevents.*"))
