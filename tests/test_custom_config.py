"""The config of a user's own space (``nas_jax.configs.custom``) and a space whose depth is a
decision, searched end to end with a fake reward (no child training)."""

import dataclasses
import importlib.util
import json
import logging
import os

import numpy as np
import pytest

from nas_jax import config as config_lib
from nas_jax import configs
from nas_jax.configs import custom
from nas_jax import experiment
from nas_jax.spaces import base
from nas_jax.training import data, trainer

from toy_space import MLPArch, MLPSpace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_DATA = data.Dataset("none", *([np.zeros((1, 1), np.float32)] * 6), num_classes=2,
                       augment=False)


def fake_reward(space, arch, dataset, key):
  """Reward = fraction of hidden layers 64 wide with tanh, + 0.01 (nothing is trained)."""
  del space, dataset, key
  score = float(np.mean([w == 64 and a == "tanh" for w, a in zip(arch.widths, arch.activations)]))
  return trainer.ChildResult(score + 0.01, {"val_accuracy": score}, 0, False, "", 0.0)


def quick(steps=2):
  cfg = custom.get_config("quick")
  cfg.search.num_steps = steps
  cfg.search.children_per_step = 4
  return cfg


def test_the_custom_config_has_no_space_section_and_parses_with_a_space():
  cfg = custom.get_config()
  assert dict(cfg.search_space) == {"name": ""}
  assert cfg.data.name == "digits"
  parsed = config_lib.parse(cfg, MLPSpace())
  assert parsed.search_space == MLPSpace()    # the space given is the space checked
  config_lib.validate(custom.get_config("quick"), MLPSpace())
  # The same config by name, and the experiments/ shim that --config names.
  assert "custom" in configs.NAMES
  assert configs.get_config("custom", "quick").to_dict() == custom.get_config("quick").to_dict()
  spec = importlib.util.spec_from_file_location(
      "custom_shim", os.path.join(ROOT, "experiments", "configs", "custom.py"))
  shim = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(shim)
  assert shim.get_config().to_dict() == cfg.to_dict()
  with pytest.raises(ValueError, match="unknown argument 'tiny'"):
    custom.get_config("tiny")


def test_without_a_space_it_stops_with_one_line(tmp_path):
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(custom.get_config())
  assert "\n" not in str(e.value)
  assert "has no search space" in str(e.value) and "space=MySpace()" in str(e.value)
  with pytest.raises(config_lib.ConfigError, match="has no search space"):
    experiment.run_search(custom.get_config("quick"), str(tmp_path / "w"))   # as the command line
  assert not (tmp_path / "w").exists()
  cfg = custom.get_config()
  with cfg.unlocked():
    cfg.search_space.widths = (1, 2)   # fields of a section the config does not have
  with pytest.raises(config_lib.ConfigError, match="search_space.widths: unknown key"):
    config_lib.validate(cfg, MLPSpace())


def test_a_search_of_the_toy_space_with_the_custom_config(tmp_path):
  result = experiment.run_search(quick(steps=2), str(tmp_path), space=MLPSpace(), dataset=NO_DATA,
                             evaluate_fn=fake_reward)
  assert result.num_evaluated == 8
  record = json.loads((tmp_path / "config.json").read_text())
  record = record.get("config", record)
  spaced = {k: v for k, v in record.items() if k.startswith("search_space.")}
  assert spaced["search_space.name"] == "mlp" and spaced["search_space.class"] == "MLPSpace"
  assert "search_space.num_filters" not in spaced   # no CNN section borrowed
  assert set(result.best["arch"]) == {"widths", "activations"}


@dataclasses.dataclass(frozen=True)
class DepthMLPSpace(MLPSpace):
  """MLPSpace whose depth (1 to ``layers``) is the controller's first decision: layer l's two
  steps are gated by the depth token (active iff token >= l)."""
  name: str = "mlp_depth"

  @property
  def decisions(self):
    return super().decisions + (base.Decision("depth", self.layers),)

  def plan(self, num_layers):
    layer = lambda l: tuple(base.gated(base.choice(d), by=0, at_least=l) for d in (0, 1))
    return (base.choice(2),) + tuple(s for l in range(num_layers) for s in layer(l))

  def decode(self, plan, tokens_T):
    v = base.split_tokens(plan, tokens_T)
    depth = v[0] + 1
    return MLPArch(tuple(self.widths[i] for i in v[1::2][:depth]),
                   tuple(self.activations[i] for i in v[2::2][:depth]))


def test_a_depth_deciding_space_searches_with_masked_steps(tmp_path, caplog):
  space = DepthMLPSpace(layers=3)
  with caplog.at_level(logging.INFO):
    result = experiment.run_search(quick(steps=2), str(tmp_path), space=space, dataset=NO_DATA,
                                   evaluate_fn=fake_reward)
  steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
  assert len(steps) == 2 and all("| layers up to 3 (gated) |" in line for line in steps)
  with open(tmp_path / "history.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == result.num_evaluated == 8
  depths = {len(r["arch"]["widths"]) for r in rows}
  assert depths <= {1, 2, 3} and len(depths) > 1
  for r in rows:
    depth = r["tokens"][0] + 1
    assert len(r["arch"]["widths"]) == depth
    assert all(t == 0 for t in r["tokens"][1 + 2 * depth:])   # masked tokens are written as 0
