"""Tests for nas_jax.core.reinforce and nas_jax.core.searchers.

The REINFORCE gradient is checked against its closed form on one categorical step: with
probabilities p and sampled token a, d log p(a) / d b_c = 1[c = a] - p_c, so the surrogate's
gradient with respect to the head bias is -(1/m) sum_k (R_k - b) (onehot(a_k) - p).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax.core import controller, reinforce, searchers
from nas_jax.spaces import base
from nas_jax.spaces.base import Decision, choice
from nas_jax.spaces.cnn import CNNSpace

DECS = (Decision("x", 3), Decision("y", 2))   # y is padded to 3 in the stacked heads
ONE_STEP = (choice(0),)
TWO_STEPS = (choice(0), choice(1))
PEAKY = controller.ControllerConfig(init_scale=1.0)

# Outside jit, log_prob and its gradient run op by op (slow on a small CPU); the library calls them
# inside its jitted update. Jitted copies keep these tests fast.
_STATIC = ("plan", "decisions", "cfg")
_log_prob = jax.jit(controller.log_prob, static_argnames=_STATIC)
_grad = jax.jit(jax.grad(reinforce.surrogate_loss, has_aux=True), static_argnames=_STATIC)


def _choice_probs(params, plan_step_decision=0):
  """Probabilities of every choice of a one-step plan over decision ``plan_step_decision``."""
  n = DECS[plan_step_decision].num_choices
  logp, _ = _log_prob(params, np.arange(n, dtype=np.int32)[:, None],
                      plan=(choice(plan_step_decision),), decisions=DECS)
  return np.exp(np.asarray(logp, np.float64))


# ----------------------------------------------------------------------------------------------
# surrogate loss and its gradient


def test_surrogate_gradient_matches_closed_form_on_one_step():
  params = controller.init(jax.random.key(0), DECS, PEAKY)
  p = _choice_probs(params)
  assert p.max() - p.min() > 0.05
  tokens = np.array([[0], [2], [2]], np.int32)
  rewards = np.array([1.0, 0.2, 0.5], np.float32)
  b = 0.4
  cfg = reinforce.ReinforceConfig()
  grads, aux = _grad(params, tokens, rewards, b, plan=ONE_STEP, decisions=DECS, cfg=cfg)
  onehot = np.eye(3)[tokens[:, 0]]
  want = -np.mean((rewards - b)[:, None] * (onehot - p), axis=0)
  # by hand: advantages (0.6, -0.2, 0.1); want = -(1/3)[0.6 (1-p0, -p1, -p2)
  #   - 0.2 (-p0, -p1, 1-p2) + 0.1 (-p0, -p1, 1-p2)] = -(1/3)(0.6 - 0.5 p0, -0.5 p1, -0.1 - 0.5 p2)
  np.testing.assert_allclose(
      want, -np.array([0.6 - 0.5 * p[0], -0.5 * p[1], -0.1 - 0.5 * p[2]]) / 3, atol=1e-6)
  np.testing.assert_allclose(grads["head_b_DxC"][0], want, atol=1e-5)
  # decision y's head is not used by this plan
  np.testing.assert_array_equal(grads["head_b_DxC"][1], 0.0)
  np.testing.assert_array_equal(grads["head_w_DxHxC"][1], 0.0)
  np.testing.assert_array_equal(grads["embed_DxCxH"], 0.0)   # nothing follows the one step
  # the loss value and aux
  logp = np.log(p[tokens[:, 0]])
  loss, aux = reinforce.surrogate_loss(params, tokens, rewards, b, plan=ONE_STEP, decisions=DECS,
                                       cfg=cfg)
  assert float(loss) == pytest.approx(-np.mean((rewards - b) * logp), abs=1e-6)
  assert float(aux["log_prob"]) == pytest.approx(logp.mean(), abs=1e-6)
  assert float(aux["entropy"]) == pytest.approx(-(p * np.log(p)).sum(), abs=1e-5)


def test_surrogate_gradient_with_entropy_bonus():
  """dH/db_c = -p_c (log p_c + H), so the bonus adds w p_c (log p_c + H) to the loss gradient."""
  params = controller.init(jax.random.key(1), DECS, PEAKY)
  p = _choice_probs(params)
  h = -(p * np.log(p)).sum()
  tokens = np.array([[1], [0]], np.int32)
  rewards = np.array([0.3, 0.9], np.float32)
  b, w = 0.5, 0.25
  cfg = reinforce.ReinforceConfig(entropy_weight=w)
  grads, _ = _grad(
      params, tokens, rewards, b, plan=ONE_STEP, decisions=DECS, cfg=cfg)
  onehot = np.eye(3)[tokens[:, 0]]
  want = -np.mean((rewards - b)[:, None] * (onehot - p), axis=0) + w * p * (np.log(p) + h)
  np.testing.assert_allclose(grads["head_b_DxC"][0], want, atol=1e-5)


def test_surrogate_gradient_two_steps_and_padding():
  """Two steps: the second head (decision y, 2 of 3 columns valid) gets the same closed form and
  its padding column gets exactly zero gradient."""
  params = controller.init(jax.random.key(2), DECS, PEAKY)
  tokens = np.array([[2, 1], [0, 0]], np.int32)
  rewards = np.array([1.0, 0.0], np.float32)
  b = 0.25
  every = np.array([[a, c] for a in range(3) for c in range(2)], np.int32)
  lp, _ = _log_prob(params, every, plan=TWO_STEPS, decisions=DECS)
  logp_all = {(a, c): float(v) for (a, c), v in zip(every, np.asarray(lp))}
  grads, _ = _grad(
      params, tokens, rewards, b, plan=TWO_STEPS, decisions=DECS, cfg=reinforce.ReinforceConfig())
  p1 = _choice_probs(params, 0)
  want_x = -np.mean((rewards - b)[:, None] * (np.eye(3)[tokens[:, 0]] - p1), axis=0)
  want_y = np.zeros(3)
  for k, (a, c) in enumerate(tokens):
    q = np.exp([logp_all[a, 0], logp_all[a, 1]])
    q = q / q.sum()   # p(y | x = a)
    want_y[:2] -= (rewards[k] - b) * (np.eye(2)[c] - q) / len(tokens)
  np.testing.assert_allclose(grads["head_b_DxC"][0], want_x, atol=1e-5)
  np.testing.assert_allclose(grads["head_b_DxC"][1], want_y, atol=1e-5)
  assert float(grads["head_b_DxC"][1, 2]) == 0.0
  np.testing.assert_array_equal(grads["head_w_DxHxC"][1, :, 2], 0.0)


# ----------------------------------------------------------------------------------------------
# update


# update() compiles once per (plan, decisions, cfg, batch size): the update tests share one.
UPDATE_CFG = reinforce.ReinforceConfig(learning_rate=0.01, baseline_decay=0.9)


def test_update_baseline_step_and_adam():
  cfg = UPDATE_CFG
  state = reinforce.init_state(jax.random.key(3), DECS, cfg)
  assert int(state.step) == 0 and not bool(state.baseline_ready)
  tokens = np.array([[0], [2], [1]], np.int32)
  r1 = np.array([0.2, 0.4, 0.9], np.float32)
  g1, _ = _grad(
      state.params, tokens, r1, 0.5, plan=ONE_STEP, decisions=DECS, cfg=cfg)
  s1, m1 = reinforce.update(state, tokens, r1, plan=ONE_STEP, decisions=DECS, cfg=cfg)
  # first call: baseline = batch mean 0.5; the EMA of 0.5 with itself stays 0.5
  assert float(m1["baseline"]) == pytest.approx(0.5, abs=1e-6)
  assert float(s1.baseline) == pytest.approx(0.5, abs=1e-6)
  assert bool(s1.baseline_ready) and int(s1.step) == 1
  norm = np.sqrt(sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(g1)))
  assert float(m1["grad_norm"]) == pytest.approx(norm, rel=1e-5)
  # first Adam step: delta = -lr * g / (|g| + eps), i.e. -lr * sign(g) where |g| >> eps
  g = np.asarray(g1["head_b_DxC"][0])
  assert np.all(np.abs(g) > 1e-4)
  delta = np.asarray(s1.params["head_b_DxC"][0] - state.params["head_b_DxC"][0])
  np.testing.assert_allclose(delta, -0.01 * np.sign(g), rtol=1e-3)
  np.testing.assert_array_equal(s1.params["head_b_DxC"][1], state.params["head_b_DxC"][1])
  # second call uses the stored baseline 0.5, then b <- 0.9 * 0.5 + 0.1 * mean(r2)
  r2 = np.array([1.0, 1.0, 0.1], np.float32)
  s2, m2 = reinforce.update(s1, tokens, r2, plan=ONE_STEP, decisions=DECS, cfg=cfg)
  assert float(m2["baseline"]) == pytest.approx(0.5, abs=1e-6)
  assert float(s2.baseline) == pytest.approx(0.9 * 0.5 + 0.1 * 0.7, abs=1e-6)
  assert float(m2["new_baseline"]) == float(s2.baseline)   # what the log shows after "->"
  assert int(s2.step) == 2
  s3, m3 = reinforce.update(s2, tokens, r2, plan=ONE_STEP, decisions=DECS, cfg=cfg)
  assert float(m3["baseline"]) == pytest.approx(0.52, abs=1e-6)
  assert float(s3.baseline) == pytest.approx(0.9 * 0.52 + 0.1 * 0.7, abs=1e-6)
  assert int(s3.step) == 3


def test_update_with_zero_advantage_leaves_params_unchanged():
  cfg = UPDATE_CFG
  state = reinforce.init_state(jax.random.key(4), DECS, cfg)
  tokens = np.array([[0], [2], [2]], np.int32)
  same = np.full(3, 0.5, np.float32)
  s1, m1 = reinforce.update(state, tokens, same, plan=ONE_STEP, decisions=DECS, cfg=cfg)
  assert float(m1["grad_norm"]) == 0.0
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(s1.params)):
    np.testing.assert_array_equal(a, b)
  # second call: rewards equal to the stored baseline 0.5 -> still no change
  s2, m2 = reinforce.update(s1, tokens, same, plan=ONE_STEP, decisions=DECS, cfg=cfg)
  assert float(m2["baseline"]) == 0.5 and float(m2["grad_norm"]) == 0.0
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(s2.params)):
    np.testing.assert_array_equal(a, b)
  assert int(s2.step) == 2
  # while a reward away from the baseline does move the parameters
  s3, _ = reinforce.update(s2, tokens, np.array([1.0, 0.5, 0.5], np.float32), plan=ONE_STEP,
                           decisions=DECS, cfg=cfg)
  moved = sum(float(jnp.abs(a - b).sum())
              for a, b in zip(jax.tree.leaves(s2.params), jax.tree.leaves(s3.params)))
  assert moved > 0.1


# lr 0.01 converges on all of 6 seeds tried; 0.02-0.05 often collapse early onto a wrong sequence.
FAKE_REWARD_CFG = reinforce.ReinforceConfig(learning_rate=0.01)


@pytest.mark.slow
def test_reinforce_learns_a_fake_reward_without_child_training():
  """Reward = fraction of tokens equal to a target; the controller must find the target."""
  space = CNNSpace(predict_strides=False)
  plan, decisions = space.plan(2), space.decisions
  # layer 0: 5x1, 64 filters; layer 1: 3x7, 24 filters, input layer 0
  target = np.array([2, 0, 3, 1, 3, 0, 1], np.int32)
  assert target.shape == (base.num_tokens(plan),)
  cfg = FAKE_REWARD_CFG
  state = reinforce.init_state(jax.random.key(0), decisions, cfg)

  def p_target(params):
    lp, _ = _log_prob(params, target[None], plan=plan, decisions=decisions)
    return float(np.exp(lp[0]))

  p0 = p_target(state.params)
  assert p0 < 1e-3   # about (1/4)^6 (1/2) = 1.2e-4 at init
  key = jax.random.key(10)
  rewards = []
  for _ in range(200):
    key, k = jax.random.split(key)
    tokens, _, _ = controller.sample(state.params, k, plan=plan, decisions=decisions, m=8)
    r = jnp.mean(tokens == target, axis=1)
    rewards.append(float(jnp.mean(r)))
    state, _ = reinforce.update(state, tokens, r, plan=plan, decisions=decisions, cfg=cfg)
  assert np.mean(rewards[:10]) < 0.5
  assert np.mean(rewards[-20:]) > 0.9
  assert p_target(state.params) > 0.5
  assert int(state.step) == 200


# ----------------------------------------------------------------------------------------------
# searchers


def test_random_searcher_uniform_choices_and_fair_bits():
  space = CNNSpace(predict_strides=True)
  plan, decisions = space.plan(3), space.decisions
  s = searchers.RandomSearcher()
  state = s.init(jax.random.key(0), decisions)
  m = 4000
  tokens, info = s.propose(state, jax.random.key(1), plan, decisions, m)
  assert tokens.shape == (m, base.num_tokens(plan)) == (m, 3 * 5 + 3)
  assert tokens.dtype == np.int32
  assert info["entropy"] == pytest.approx(3 * (2 * np.log(4) + 2 * np.log(3) + np.log(4))
                                          + 3 * np.log(2))
  pos = 0
  for st in plan:
    if st.kind == base.CHOICE:
      n = decisions[st.decision].num_choices
      freq = np.bincount(tokens[:, pos], minlength=n) / m
      assert len(freq) == n   # never out of range
      assert np.all(np.abs(freq - 1 / n) < 0.035), (pos, freq)
      pos += 1
    else:
      for _ in range(st.layer):
        assert set(np.unique(tokens[:, pos])) == {0, 1}
        assert abs(tokens[:, pos].mean() - 0.5) < 0.035
        pos += 1
  # columns are independent: two 4-way columns agree with probability 1/4
  assert abs(np.mean(tokens[:, 0] == tokens[:, 1]) - 0.25) < 0.035
  # the two bits of layer 2 (last two of layer 2's block) agree with probability 1/2
  assert abs(np.mean(tokens[:, 16] == tokens[:, 17]) - 0.5) < 0.035
  # same key, same tokens; another key, other tokens
  again, _ = s.propose(state, jax.random.key(1), plan, decisions, m)
  np.testing.assert_array_equal(tokens, again)
  other, _ = s.propose(state, jax.random.key(2), plan, decisions, m)
  assert not np.array_equal(tokens, other)


def test_random_searcher_feedback_only_counts():
  s = searchers.RandomSearcher()
  state = s.init(jax.random.key(0), DECS)
  assert int(state["step"]) == 0
  state, metrics = s.feedback(state, np.zeros((2, 1), np.int32), np.array([1.0, 0.0]), ONE_STEP,
                              DECS)
  state, metrics = s.feedback(state, np.zeros((2, 1), np.int32), np.array([1.0, 0.0]), ONE_STEP,
                              DECS)
  assert set(state) == {"step"} and int(state["step"]) == 2
  assert metrics == {}
  # proposals do not depend on the state
  t1, _ = s.propose(state, jax.random.key(5), TWO_STEPS, DECS, 16)
  t2, _ = s.propose(s.init(jax.random.key(9), DECS), jax.random.key(5), TWO_STEPS, DECS, 16)
  np.testing.assert_array_equal(t1, t2)


def test_reinforce_searcher_round_trip():
  space = CNNSpace()
  plan, decisions = space.plan(2), space.decisions
  s = searchers.make_searcher("reinforce", FAKE_REWARD_CFG)   # (shares the compiled programs)
  assert isinstance(s, searchers.ReinforceSearcher)
  state = s.init(jax.random.key(0), decisions)
  tokens, info = s.propose(state, jax.random.key(1), plan, decisions, 8)
  assert isinstance(tokens, np.ndarray) and tokens.shape == (8, 7)
  lp, ent = _log_prob(state.params, tokens, plan=plan, decisions=decisions)
  assert info["log_prob"] == pytest.approx(float(jnp.mean(lp)), abs=1e-5)
  assert info["entropy"] == pytest.approx(float(jnp.mean(ent)), abs=1e-5)
  rewards = np.array([0.1, 0.5, 0.2, 0.9, 0.0, 0.0, 1.0, 0.7])
  new_state, metrics = s.feedback(state, tokens, rewards, plan, decisions)
  assert int(new_state.step) == 1
  assert set(metrics) == {"loss", "baseline", "new_baseline", "grad_norm", "log_prob", "entropy"}
  assert all(isinstance(v, float) for v in metrics.values())
  assert metrics["baseline"] == pytest.approx(0.425)   # first batch: its own mean
  assert metrics["log_prob"] == pytest.approx(info["log_prob"], abs=1e-5)
  assert metrics["grad_norm"] > 0
  new_state, _ = s.feedback(new_state, tokens, rewards, plan, decisions)
  assert int(new_state.step) == 2


def test_make_searcher():
  assert isinstance(searchers.make_searcher("random", reinforce.ReinforceConfig()),
                    searchers.RandomSearcher)
  with pytest.raises(ValueError, match="unknown searcher"):
    searchers.make_searcher("evolution", reinforce.ReinforceConfig())


def test_accumulated_gradients_update_the_policy_every_k_steps_with_their_mean():
  cfg = dataclasses.replace(UPDATE_CFG, accumulate_steps=3)
  state = reinforce.init_state(jax.random.key(3), DECS, cfg)
  tokens = np.array([[0], [2], [1]], np.int32)
  # Rewards whose mean gradient has no component near 0: Adam's first step is -lr * g / (|g| +
  # eps), so a component that cancels to 0 exactly in one evaluation order and to 1e-9 in another
  # (as [0.2, 0.4, 0.9], [1.0, 0.0, 0.5], [0.3, 0.3, 0.9] did) would test rounding, not the update.
  rewards = [np.array(r, np.float32) for r in ([0.2, 0.4, 0.9], [1.0, 0.1, 0.5], [0.3, 0.6, 0.8])]
  grads, s = [], state
  for k, r in enumerate(rewards):
    b = float(np.mean(rewards[0])) if k == 0 else float(s.baseline)
    grads.append(_grad(s.params, tokens, r, b, plan=ONE_STEP, decisions=DECS, cfg=cfg)[0])
    s, _ = reinforce.update(s, tokens, r, plan=ONE_STEP, decisions=DECS, cfg=cfg)
    if k < 2:   # policy frozen while gradients accumulate; the baseline moves every step
      np.testing.assert_array_equal(s.params["head_b_DxC"], state.params["head_b_DxC"])
  assert int(s.step) == 3
  # after the 3rd step: one Adam step on the mean gradient, i.e. -lr * sign(mean g)
  g = np.mean([np.asarray(gr["head_b_DxC"][0]) for gr in grads], axis=0)
  assert np.all(np.abs(g) > 1e-3), g
  delta = np.asarray(s.params["head_b_DxC"][0] - state.params["head_b_DxC"][0])
  np.testing.assert_allclose(delta, -0.01 * np.sign(g), rtol=1e-3)


def test_feedback_refuses_rewards_that_do_not_match_the_proposed_children():
  # A custom evaluator that drops a child must not shift every later reward onto the wrong tokens.
  space = CNNSpace(predict_strides=False)
  plan, decisions = space.plan(2), space.decisions
  searcher = searchers.ReinforceSearcher(FAKE_REWARD_CFG)
  state = searcher.init(jax.random.key(0), decisions)
  tokens, _ = searcher.propose(state, jax.random.key(1), plan, decisions, 4)
  assert tokens.shape == (4, base.num_tokens(plan))
  with pytest.raises(AssertionError, match="shape"):
    searcher.feedback(state, tokens, np.ones(3, np.float32), plan, decisions)
  state, metrics = searcher.feedback(state, tokens, np.ones(4, np.float32), plan, decisions)
  assert np.isfinite(metrics["loss"])


# ----------------------------------------------------------------------------------------------
# gated steps (a count token that shortens the plan)

# "n" picks the depth n + 1 of up to 3 layers, each a choice of decision "w" (4 choices, used by
# nothing else); a last step "y" after the layers is active in every plan.
GATED_DECS = (Decision("n", 3), Decision("w", 4), Decision("y", 2))
GATED_PLAN = ((choice(0), choice(1), base.gated(choice(1), 0, 1), base.gated(choice(1), 0, 2),
               choice(2)))


def test_masked_steps_get_no_gradient():
  params = controller.init(jax.random.key(5), GATED_DECS, PEAKY)
  tokens = np.array([[0, 3, 0, 0, 1], [1, 2, 1, 0, 0], [0, 1, 0, 0, 0]], np.int32)
  rewards, b = np.array([1.0, 0.2, 0.6], np.float32), 0.3
  cfg = reinforce.ReinforceConfig(entropy_weight=0.1)
  grads, aux = _grad(params, tokens, rewards, b, plan=GATED_PLAN, decisions=GATED_DECS, cfg=cfg)
  # Any values in the masked positions (rows 0 and 2: layers 1 and 2; row 1: layer 2) give the
  # same gradient, bit for bit.
  changed = tokens.copy()
  changed[[0, 0, 1, 2, 2], [2, 3, 3, 2, 3]] = [3, 2, 1, 1, 3]
  grads2, aux2 = _grad(params, changed, rewards, b, plan=GATED_PLAN, decisions=GATED_DECS,
                       cfg=cfg)
  jax.tree.map(np.testing.assert_array_equal, grads, grads2)
  assert aux == aux2
  # A batch of depth-1 samples gives the gradient of the plan without the gated steps.
  short = tokens[[0, 2, 2]]
  plain = (choice(0), choice(1), choice(2))
  g_gated, _ = _grad(params, short, rewards, b, plan=GATED_PLAN, decisions=GATED_DECS, cfg=cfg)
  g_plain, _ = _grad(params, short[:, [0, 1, 4]], rewards, b, plan=plain, decisions=GATED_DECS,
                     cfg=cfg)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), g_gated, g_plain)


def test_random_searcher_zeroes_masked_tokens():
  s = searchers.RandomSearcher()
  tokens, info = s.propose(s.init(None, GATED_DECS), jax.random.key(0), GATED_PLAN, GATED_DECS,
                           2000)
  assert set(tokens[:, 0]) == {0, 1, 2}
  for t in tokens:
    on = base.active_steps(GATED_PLAN, t)
    assert np.all(t[~on] == 0) and on.sum() == 3 + t[0]
  # mean over samples of its active steps' log-choices: log 3 + log 4 + log 2 + E[n] log 4
  want = np.log(3) + np.log(4) + np.log(2) + tokens[:, 0].mean() * np.log(4)
  assert info["entropy"] == pytest.approx(want)
  assert np.mean(tokens[tokens[:, 0] == 2, 3] == 3) == pytest.approx(0.25, abs=0.06)


def test_the_count_token_learns_a_planted_depth():
  """Reward 1 for depth 3 (count token 2), 0.2 otherwise: no child training, just the controller."""
  cfg = reinforce.ReinforceConfig(learning_rate=0.05)
  state = reinforce.init_state(jax.random.key(6), GATED_DECS, cfg)
  key = jax.random.key(7)
  first = []
  for i in range(60):
    tokens, _, _ = controller.sample(state.params, jax.random.fold_in(key, i), plan=GATED_PLAN,
                                     decisions=GATED_DECS, m=8)
    depth = np.asarray(tokens)[:, 0] + 1
    if i < 5:
      first.append(np.mean(depth == 3))
    state, _ = reinforce.update(state, tokens, np.where(depth == 3, 1.0, 0.2), plan=GATED_PLAN,
                                decisions=GATED_DECS, cfg=cfg)
  # p(n = k) is the first step's softmax: score each n alone on the one-step plan.
  p = np.exp(np.asarray(_log_prob(state.params, np.arange(3, dtype=np.int32)[:, None],
                                  plan=(choice(0),), decisions=GATED_DECS)[0]))
  assert np.mean(first) < 0.6
  assert p[2] > 0.9, p
