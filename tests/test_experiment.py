"""The experiment assembly: parts per space type, a searcher written outside the package."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax import config as config_lib, errors, experiment
from nas_jax.core import searchers
from nas_jax.spaces import cnn, rnn_cell
from nas_jax.training import shared_cnn, shared_rnn, trainer

from test_search import _NO_DATA, FakeEvaluator, fake_config, read_rows
from toy_space import MLPSpace


def wide_and_tanh(space, arch, dataset, key):
  """A reward every single-token step towards 64-wide tanh layers raises."""
  del space, dataset, key
  score = np.mean([w == 64 for w in arch.widths] + [a == "tanh" for a in arch.activations])
  return trainer.ChildResult(float(score), {}, 0, False, "", 0.0)


class MutateBest:
  """A searcher written outside the package: the best tokens so far, one token redrawn per child."""
  name = "mutate-best"

  def init(self, key, decisions):
    del key, decisions
    return {"best": jnp.zeros((4,), jnp.int32), "reward": jnp.asarray(-1.0)}

  def propose(self, state, key, plan, decisions, m):
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    tokens = np.tile(np.asarray(state["best"]), (m, 1))
    for k in range(m):
      i = int(rng.integers(len(plan)))
      tokens[k, i] = rng.integers(decisions[plan[i].decision].num_choices)
    return tokens.astype(np.int32), {"entropy": 0.0}

  def feedback(self, state, tokens, rewards, plan, decisions):
    del plan, decisions
    k = int(np.argmax(rewards))
    if rewards[k] > float(state["reward"]):
      state = {"best": jnp.asarray(tokens[k], jnp.int32), "reward": jnp.asarray(rewards[k])}
    return state, {"best_reward": float(state["reward"])}


def test_a_searcher_object_written_outside_the_package_drives_the_search(tmp_path):
  result = experiment.run_search(fake_config(steps=6), str(tmp_path), space=MLPSpace(),
                                 dataset=_NO_DATA, evaluate_fn=wide_and_tanh,
                                 searcher=MutateBest(), progress=False)
  rows = read_rows(tmp_path)
  assert len(rows) == 6 * 4
  # Its proposals are the ones recorded: every child of step 0 is one token away from all zeros.
  assert all(sum(t != 0 for t in r["tokens"]) <= 1 for r in rows if r["step"] == 0)
  # Its feedback is what it learnt from: it climbs, and the best row is the best reward it saw.
  first, last = (max(r["reward"] for r in rows if r["step"] == s) for s in (0, 5))
  assert last > first and result.best["reward"] == max(r["reward"] for r in rows)
  steps = [json.loads(line) for line in open(tmp_path / "steps.jsonl")]
  assert [s["best_reward"] for s in steps] == sorted(s["best_reward"] for s in steps)
  assert json.load(open(tmp_path / "config.json"))["search.searcher"] == "mutate-best"


def test_a_registered_searcher_is_named_by_the_config(tmp_path):
  cfg = fake_config(steps=2, searcher="mutate-best")
  with pytest.raises(errors.ConfigError, match="'mutate-best' is not one of .'reinforce', 'random'."):
    config_lib.parse(cfg, MLPSpace())
  searchers.register("mutate-best", lambda controller_cfg: MutateBest())
  try:
    experiment.run_search(cfg, str(tmp_path), space=MLPSpace(), dataset=_NO_DATA,
                          evaluate_fn=FakeEvaluator(), progress=False)
  finally:
    del searchers.SEARCHERS["mutate-best"]
  assert all(sum(t != 0 for t in r["tokens"]) <= 1 for r in read_rows(tmp_path) if r["step"] == 0)


def test_an_object_without_the_searcher_methods_is_refused_before_anything_is_written(tmp_path):
  with pytest.raises(TypeError, match="no feedback"):
    experiment.run_search(fake_config(steps=1), str(tmp_path / "w"), space=MLPSpace(),
                          dataset=_NO_DATA, searcher=type("Half", (), {"init": id, "propose": id})())
  assert not (tmp_path / "w").exists()


def test_parts_follow_the_space_type_a_subclass_included():
  class MyCNN(cnn.CNNSpace):
    pass
  assert experiment.parts_of(cnn.CNNSpace()).shared_executor is shared_cnn.Executor
  assert experiment.parts_of(MyCNN()).shared_executor is shared_cnn.Executor
  assert experiment.parts_of(rnn_cell.RNNCellSpace()).shared_executor is shared_rnn.Executor
  assert experiment.parts_of(MLPSpace()) is experiment.USER_SPACE_PARTS


def test_a_user_space_under_the_vmap_executor_is_refused_naming_the_field():
  cfg = fake_config(steps=1)
  cfg.child.executor = "vmap"
  with pytest.raises(errors.ConfigError, match="config.child.executor: 'vmap'.*MLPSpace"):
    experiment.evaluator_of(config_lib.parse(cfg, MLPSpace()))
