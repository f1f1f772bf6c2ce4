"""Final training of found CNNs (nas_jax/core/retrain.py, experiments/train_child.py)."""

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from nas_jax import config as config_lib, experiment
from nas_jax.configs import cnn_cifar10_final, cnn_digits, cnn_digits_final
from nas_jax.core import retrain, workdir as workdir_lib
from nas_jax.spaces import base, cnn
from nas_jax.training import data, trainer

from test_summaries import _read_scalars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACE = config_lib.parse(cnn_digits.get_config("quick")).search_space  # filters (4, 8)

A = "0:3x3x4<img 1:3x3x4<0"   # the two architectures the tests train
B = "0:3x1x4<img 1:1x3x4<img"


def _arch(text):
  return cnn.parse_arch(text, SPACE)


def _row(step, index, text, reward, failed=False):
  arch, tokens = _arch(text)
  return {"step": step, "index": index, "num_layers": len(arch.layers), "tokens": tokens,
          "arch": base.to_json(arch), "description": SPACE.describe(arch), "reward": reward,
          "val_accuracy": reward, "param_count": 0, "seconds": 1.0, "failed": failed,
          "error": "boom" if failed else ""}


def _write_search(path, rows, space=SPACE, cfg=None):
  """A search workdir as experiments/search.py leaves it: config.json and history.jsonl."""
  os.makedirs(path, exist_ok=True)
  cfg = cfg or cnn_digits.get_config("quick")
  record = workdir_lib.config_record(config_lib.parse(cfg), space, base.ACCURACY)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(record, f)
  with open(os.path.join(path, "history.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return str(path)


HISTORY = [_row(0, 0, B, 0.30), _row(0, 1, A, 0.50), _row(1, 0, A, 0.70),   # A twice
           _row(1, 1, "0:7x7x8<img 1:7x7x8<0", 0.95, failed=True), _row(2, 0, "0:5x5x4<img "
                                                                     "1:5x5x8<img", 0.10)]


def _config(**child):
  cfg = cnn_digits_final.get_config("quick")
  with cfg.unlocked():
    cfg.data.max_train = 64
    cfg.child.update(child)
  return cfg


def _comparable(metrics):
  return {**metrics, "children": [{k: v for k, v in c.items() if k != "seconds"}
                                  for c in metrics["children"]]}


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory):
  return _write_search(tmp_path_factory.mktemp("search"), HISTORY)


@pytest.fixture(scope="module")
def whole(search_dir):
  """An uninterrupted retraining of the search's 2 best architectures (A, then B)."""
  return experiment.retrain(_config(), search_workdir=search_dir, top_k=2)


# ----------------------------------------------------------------------------------------------
# Choosing and parsing architectures (no training)


def test_top_k_is_unique_by_tokens_best_reward_first_and_skips_failed_rows():
  rows = retrain.top_unique(HISTORY, 5)
  assert [r["description"] for r in rows] == [SPACE.describe(_arch(t)[0]) for t in
                                               (A, B, "0:5x5x4<img 1:5x5x8<img")]
  assert [r["reward"] for r in rows] == [0.70, 0.30, 0.10]  # A's better evaluation kept
  assert retrain.top_unique(HISTORY, 1)[0]["reward"] == 0.70


def test_arch_forms_agree_and_tokens_decode_back():
  arch, tokens = _arch("0:3x5x8<img 1:7x1x4<0")
  # per layer: FH, FW, N indices, then one bit per earlier layer
  assert tokens == [1, 2, 1] + [3, 0, 0, 1]
  assert SPACE.decode(SPACE.plan(2), np.asarray(tokens)) == arch
  assert cnn.parse_arch(json.dumps(tokens), SPACE) == (arch, tokens)
  assert cnn.parse_arch(json.dumps(base.to_json(arch)), SPACE) == (arch, tokens)
  row = _row(0, 0, "0:3x5x8<img 1:7x1x4<0", 0.5)
  assert cnn.parse_arch(json.dumps(row), SPACE) == (arch, tokens)
  assert SPACE.describe(arch) == "0:3x5x8<img 1:7x1x4<0"


@pytest.mark.parametrize("text,message", [
    ("0:3x3x5<img", "number of filters 5 is not one of the space's [4, 8]"),
    ("0:3x3x4<img 1:3x3x4<1", "must be earlier layers"),
    ("0:3x3<img", "is not 'INDEX:FHxFWxN<INPUTS'"),
    ("[1, 2]", "no whole number of layers"),
    ("[1, 2, 9]", "outside its decision's choices"),
    ("[1, 2, -1]", "outside its decision's choices"),
    ('{"layers": 3}', "not a CNN architecture"),
    ("0:3x3x4/s2x2<img", "not an architecture of the space"),
])
def test_bad_arch_names_the_flag_and_the_forms(text, message):
  with pytest.raises(retrain.InputError, match="--arch") as info:
    cnn.parse_arch(text, SPACE)
  assert message in str(info.value) and "a JSON list of tokens" in str(info.value)


def _rnn_search(path):
  cfg = config_lib.default_config("rnn_cell")
  return _write_search(path, [], space=config_lib.parse(cfg).search_space, cfg=cfg)


@pytest.mark.parametrize("case,message", [
    ("missing", "not a directory"),
    ("no_history", "no history rows yet"),
    ("all_failed", "all 2 architectures of its history failed"),
    ("rnn", "not a CNN space"),
    ("neither", "give --search_workdir"),
    ("arch_alone", "--workdir: required with --arch alone"),
    ("top_k", "--top_k 0: must be >= 1"),
    ("other_data", "the search ran on 'digits' but config.data.name is 'cifar10'"),
])
def test_bad_input_is_one_error_naming_the_flag(tmp_path, case, message):
  kwargs = {"search_workdir": str(tmp_path / "s")}
  cfg = _config()
  if case == "no_history":
    _write_search(tmp_path / "s", [])
  elif case == "all_failed":
    _write_search(tmp_path / "s", [_row(0, 0, A, 0.0, True), _row(0, 1, B, 0.0, True)])
  elif case == "rnn":
    _rnn_search(tmp_path / "s")
  elif case == "neither":
    kwargs = {}
  elif case == "arch_alone":
    kwargs = {"arch": A}
  elif case == "top_k":
    _write_search(tmp_path / "s", HISTORY)
    kwargs["top_k"] = 0
  elif case == "other_data":
    _write_search(tmp_path / "s", HISTORY)
    cfg = cnn_cifar10_final.get_config("quick")
  with pytest.raises(retrain.InputError) as info:
    experiment.retrain_plan(cfg, **kwargs)
  assert message in str(info.value) and "\n" not in str(info.value)
  assert not (tmp_path / "s" / "retrain").exists()


def test_final_configs_validate_and_cifar10_is_densenets_recipe():
  for module in (cnn_digits_final, cnn_cifar10_final):
    for arg in (None, "quick"):
      config_lib.parse_final(module.get_config(arg))
  for arg in ("v2", "v3"):
    config_lib.parse_final(cnn_cifar10_final.get_config(arg))
  # :search_budget trains as the search trained each child
  budget = config_lib.parse_final(cnn_digits_final.get_config("search_budget")).train
  search = cnn_digits.get_config().child
  assert (budget.epochs, budget.learning_rate, budget.lr_schedule, budget.batch_size) == (
      search.epochs, search.learning_rate, "constant", search.batch_size) == (
          4, search.learning_rate, "constant", 64)
  c = config_lib.parse_final(cnn_cifar10_final.get_config()).train
  assert (c.epochs, c.batch_size, c.learning_rate, c.momentum, c.nesterov, c.weight_decay,
          c.lr_schedule) == (300, 64, 0.1, 0.9, True, 1e-4, "step")
  bad = _config(epochs=0)
  with pytest.raises(config_lib.ConfigError, match="config.child.epochs: must be >= 1"):
    config_lib.parse_final(bad)


def test_flops_are_xlas_count_of_the_convolutions_taps_inside_the_image():
  arch, _ = _arch("0:3x3x4<img")
  module = SPACE.build(arch, 10)
  variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  # SAME padding on 8x8: 6 rows/columns see 3 taps, the 2 border ones 2: 22 x 22 taps per filter.
  conv = 2 * 22 * 22 * 1 * 4
  dense = 2 * 4 * 10
  got = trainer.flops(module, variables, (8, 8, 1))
  assert conv + dense <= got <= conv + dense + 20 * 8 * 8 * 4  # + batch norm, ReLU, pooling


# ----------------------------------------------------------------------------------------------
# Training


def test_retraining_writes_metrics_and_the_saved_model_gives_its_test_accuracy(search_dir, whole):
  out = os.path.join(search_dir, "retrain")            # the default output directory
  with open(os.path.join(out, "metrics.json")) as f:
    assert json.load(f) == whole
  assert whole["source_workdir"] == os.path.abspath(search_dir)
  assert whole["config"]["child"]["epochs"] == 2 and whole["config"]["split_seed"] == 0
  assert [c["rank"] for c in whole["children"]] == [1, 2]
  assert [c["description"] for c in whole["children"]] == [A, B]
  assert [c["search_reward"] for c in whole["children"]] == [0.70, 0.30]
  for c in whole["children"]:
    assert len(c["val_accuracies"]) == 2 and c["val_accuracy"] == c["val_accuracies"][-1]
    assert 0.0 <= c["test_accuracy"] <= 1.0 and c["flops"] > 0 and c["seconds"] > 0
    module, variables = retrain.load_trained(out, rank=c["rank"])
    assert c["param_count"] == sum(p.size for p in jax.tree.leaves(variables["params"]))
    assert module.arch == cnn.arch_from_json(c["arch"])
  ds = data.load(config_lib.parse_final(_config()).data, 0)
  logits = jax.jit(module.apply)(variables, ds.test_images)
  right = int(np.sum(np.argmax(logits, -1) == ds.test_labels))
  assert right / len(ds.test_labels) == c["test_accuracy"]
  assert sorted(os.listdir(os.path.join(out, "rank1", "checkpoints"))) == ["1", "2"]
  scalars = _read_scalars(os.path.join(out, "rank2", "tensorboard"))
  assert [v for _, v in scalars["val/accuracy"]] == pytest.approx(c["val_accuracies"])
  assert [v for _, v in scalars["train/learning_rate"]] == pytest.approx([0.1, 0.01])  # step
  assert scalars["test/accuracy"] == [(2, pytest.approx(c["test_accuracy"]))]


def test_killed_run_resumes_to_the_uninterrupted_numbers(tmp_path, search_dir, whole):
  out = str(tmp_path / "killed")

  def kill_after_epoch_1(line):
    if line.startswith("rank 1 epoch 1/"):
      raise KeyboardInterrupt("simulated kill")

  with pytest.raises(KeyboardInterrupt):
    experiment.retrain(_config(), out, search_workdir=search_dir, log_fn=kill_after_epoch_1)
  assert os.listdir(os.path.join(out, "rank1", "checkpoints")) == ["1"]
  assert not os.path.exists(os.path.join(out, "metrics.json"))
  lines = []
  metrics = experiment.retrain(_config(), out, search_workdir=search_dir, log_fn=lines.append)
  assert any(line.startswith("rank 1 epoch 2/2") for line in lines)
  assert not any(line.startswith("rank 1 epoch 1/") for line in lines)
  assert _comparable(metrics)["children"] == _comparable(whole)["children"][:1]
  tensorboard = lambda d: _read_scalars(os.path.join(d, "rank1", "tensorboard"))
  assert tensorboard(out) == tensorboard(os.path.join(search_dir, "retrain"))  # epoch 1 once
  # A finished directory is not trained again; another config there is refused, nothing changed.
  before = open(os.path.join(out, "metrics.json")).read()
  assert experiment.retrain(_config(), out, search_workdir=search_dir, log_fn=lines.append) == metrics
  with pytest.raises(retrain.InputError, match="config.child.epochs: it has 2, now 3"):
    experiment.retrain(_config(epochs=3), out, search_workdir=search_dir)
  with pytest.raises(retrain.InputError, match="other architectures"):
    experiment.retrain(_config(), out, search_workdir=search_dir, top_k=2)
  assert open(os.path.join(out, "metrics.json")).read() == before


def test_ctrl_c_during_a_checkpoint_write_stops_once_it_is_written(tmp_path, search_dir, whole,
                                                                    monkeypatch):
  real_save = ocp.CheckpointManager.save

  def save_with_ctrl_c(self, step, *args, **kwargs):
    if step == 1:
      os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C as the checkpoint of epoch 1 is written
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save_with_ctrl_c)
  out, lines = str(tmp_path / "w"), []
  with pytest.raises(KeyboardInterrupt):
    experiment.retrain(_config(), out, search_workdir=search_dir, log_fn=lines.append)
  assert lines[-1].startswith("rank 1 epoch 1/2")   # stopped after the epoch, its checkpoint whole
  assert os.listdir(os.path.join(out, "rank1", "checkpoints")) == ["1"]
  monkeypatch.undo()
  metrics = experiment.retrain(_config(), out, search_workdir=search_dir)
  assert _comparable(metrics)["children"] == _comparable(whole)["children"][:1]


def _cli(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "train_child.py"),
                         "--config", "experiments/configs/cnn_digits_final.py:quick",
                         *args],
                        capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path):
  out = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "train_child.py"),
                        "--config", "experiments/configs/cnn_digits_final.py:quick",
                        "--arch", "0:3x3x5<img", f"--workdir={tmp_path / 'w'}"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert out.returncode == 2
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: --arch") and "not one of the space's [4, 8]" in last
  assert os.listdir(tmp_path) == []


def test_cifar10_quick_with_an_arch_alone(tmp_path):
  """--arch without a search workdir, CIFAR-10 from tfds's mock data (the augmentation path)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  cfg = cnn_cifar10_final.get_config("quick")
  with tfds.testing.mock_data(num_examples=160):  # 160 records per split; 128 for validation
    metrics = experiment.retrain(cfg, str(tmp_path / "w"), arch="0:3x3x4<img")
  c, = metrics["children"]
  assert metrics["source_workdir"] is None and c["search_reward"] is None
  assert metrics["config"]["search_space"]["class"] == "CNNSpace"
  assert c["description"] == "0:3x3x4<img" and len(c["val_accuracies"]) == 2
  assert c["param_count"] == 3 * 3 * 3 * 4 + 2 * 4 + 4 * 10 + 10  # conv, BN scale/bias, dense
