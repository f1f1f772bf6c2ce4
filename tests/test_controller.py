"""Tests for nas_jax.controller: init, sampling, teacher-forced log-probs, logit shaping.

The central checks are exact: the log-probabilities of *all* token sequences of a small plan sum to
one (softmax masking and Bernoulli skip terms), sampling frequencies match exp(log_prob), and the
skip-connection probability follows the paper's sigmoid(v^T tanh(W_prev h_j + W_curr h_i)).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax import controller
from nas_jax.search_spaces import base
from nas_jax.search_spaces.base import Decision, anchor, choice
from nas_jax.search_spaces.cnn import CNNSpace

TINY_DECISIONS = (Decision("a", 3), Decision("b", 2))
# Three layers; the anchors at layers 1 and 2 emit 1 and 2 skip bits: 6 tokens, 3*2*2*3*4 = 144
# sequences.
TINY_PLAN = (choice(0), anchor(0), choice(1), anchor(1), choice(0), anchor(2))
# A config whose weights are large enough that the distribution is far from uniform.
PEAKY = controller.ControllerConfig(init_scale=1.0)


def _all_sequences(plan, decisions):
  """Every flat token vector of ``plan`` (choice tokens, then one 0/1 per skip bit)."""
  ranges = []
  for s in plan:
    if s.kind == base.CHOICE:
      ranges.append(range(decisions[s.decision].num_choices))
    else:
      ranges += [range(2)] * s.layer
  return np.array(list(itertools.product(*ranges)), np.int32).reshape(-1, base.num_tokens(plan))


def _probs(params, tokens, plan, decisions, cfg=controller.ControllerConfig()):
  logp, _ = controller.log_prob(params, tokens, plan=plan, decisions=decisions, cfg=cfg)
  return np.exp(np.asarray(logp, np.float64))


def _one_step_probs(params, decisions, d=0, cfg=controller.ControllerConfig()):
  """Probabilities of every choice of a one-step plan over decision ``d``."""
  n = decisions[d].num_choices
  return _probs(params, np.arange(n, dtype=np.int32)[:, None], (choice(d),), decisions, cfg)


# ----------------------------------------------------------------------------------------------
# init


def test_init_uniform_in_init_scale_and_shapes():
  space = CNNSpace()
  params = controller.init(jax.random.key(0), space.decisions)
  leaves = jax.tree.leaves(params)
  assert len(leaves) == 2 * 2 + 8  # two LSTM layers (w, b) + go, anchor_embed, 3 heads/embeds, 3 attn
  allv = np.concatenate([np.ravel(x) for x in leaves])
  assert np.all(np.abs(allv) <= 0.08)
  # U(-0.08, 0.08): the extremes are approached and the mean is ~0 (n is several thousands)
  assert allv.max() > 0.079 and allv.min() < -0.079
  assert abs(allv.mean()) < 0.003
  assert allv.size > 10000
  h = 35
  assert params["lstm"][0]["w"].shape == (2 * h, 4 * h)
  assert params["lstm"][1]["b"].shape == (4 * h,)
  assert params["head_w_DxHxC"].shape == (3, h, 4)   # filter_height, filter_width, num_filters
  assert params["head_b_DxC"].shape == (3, 4)
  assert params["embed_DxCxH"].shape == (3, 4, h)
  assert params["w_prev_HxH"].shape == params["w_curr_HxH"].shape == (h, h)
  assert params["v_H"].shape == (h,)


def test_init_scale_and_shapes_follow_decisions_only():
  # Stride heads have 3 choices; the stacked heads are padded to the largest count (4).
  strided = CNNSpace(predict_strides=True)
  params = controller.init(jax.random.key(1), strided.decisions,
                           controller.ControllerConfig(init_scale=0.01))
  assert params["head_w_DxHxC"].shape == (5, 35, 4)
  assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(params)) <= 0.01
  # The same parameters drive plans of any depth (depth schedule needs no new parameters).
  for depth in (1, 4, 9):
    plan = strided.plan(depth)
    tokens, logp, _ = controller.sample(params, jax.random.key(depth), plan=plan,
                                        decisions=strided.decisions, m=2)
    assert tokens.shape == (2, base.num_tokens(plan)) == (2, 5 * depth + depth * (depth - 1) // 2)
    assert np.all(np.isfinite(np.asarray(logp)))


# ----------------------------------------------------------------------------------------------
# sample vs log_prob


def test_sample_and_log_prob_agree_on_cnn_plan():
  space = CNNSpace()
  plan, decisions = space.plan(4), space.decisions
  params = controller.init(jax.random.key(2), decisions, PEAKY)
  tokens, logp, ent = controller.sample(params, jax.random.key(3), plan=plan, decisions=decisions,
                                        cfg=PEAKY, m=16)
  assert tokens.shape == (16, base.num_tokens(plan)) == (16, 4 * 3 + 6)
  assert tokens.dtype == jnp.int32
  lp2, ent2 = controller.log_prob(params, tokens, plan=plan, decisions=decisions, cfg=PEAKY)
  np.testing.assert_allclose(lp2, logp, atol=1e-5)
  np.testing.assert_allclose(ent2, ent, atol=1e-5)
  assert np.all(np.asarray(logp) < 0)
  # token ranges per position
  tokens = np.asarray(tokens)
  pos = 0
  for s in plan:
    if s.kind == base.CHOICE:
      assert np.all((tokens[:, pos] >= 0) & (tokens[:, pos] < decisions[s.decision].num_choices))
      pos += 1
    else:
      assert set(np.unique(tokens[:, pos:pos + s.layer])) <= {0, 1}
      pos += s.layer
  assert pos == tokens.shape[1]
  # with init_scale 1 different samples have different log-probs (the scores are per sample)
  assert len(np.unique(np.round(np.asarray(logp), 4))) > 8


def test_log_prob_is_a_normalised_distribution():
  params = controller.init(jax.random.key(4), TINY_DECISIONS, PEAKY)
  seqs = _all_sequences(TINY_PLAN, TINY_DECISIONS)
  assert seqs.shape == (144, 6)
  p = _probs(params, seqs, TINY_PLAN, TINY_DECISIONS, PEAKY)
  assert p.sum() == pytest.approx(1.0, abs=1e-5)
  assert p.max() / p.min() > 3  # far from uniform, so the check is not trivially met


@pytest.mark.parametrize("cfg", [controller.ControllerConfig(temperature=2.5, init_scale=1.0),
                                 controller.ControllerConfig(tanh_constant=1.5, init_scale=1.0),
                                 controller.ControllerConfig(hidden_size=8, num_lstm_layers=1)])
def test_log_prob_is_normalised_under_config_options(cfg):
  params = controller.init(jax.random.key(5), TINY_DECISIONS, cfg)
  p = _probs(params, _all_sequences(TINY_PLAN, TINY_DECISIONS), TINY_PLAN, TINY_DECISIONS, cfg)
  assert p.sum() == pytest.approx(1.0, abs=1e-5)


def test_entropy_of_one_choice_step_matches_its_probabilities():
  decisions = (Decision("x", 4), Decision("y", 2))
  params = controller.init(jax.random.key(6), decisions, PEAKY)
  p = _one_step_probs(params, decisions, 0, PEAKY)
  _, ent = controller.log_prob(params, np.zeros((1, 1), np.int32), plan=(choice(0),),
                               decisions=decisions, cfg=PEAKY)
  assert float(ent[0]) == pytest.approx(-(p * np.log(p)).sum(), abs=1e-5)
  # Decision y is padded to 4 choices; the padding gets no probability and no entropy.
  py = _one_step_probs(params, decisions, 1, PEAKY)
  assert py.sum() == pytest.approx(1.0, abs=1e-6)
  _, ent_y = controller.log_prob(params, np.zeros((1, 1), np.int32), plan=(choice(1),),
                                 decisions=decisions, cfg=PEAKY)
  assert float(ent_y[0]) == pytest.approx(-(py * np.log(py)).sum(), abs=1e-5)
  assert float(ent_y[0]) <= np.log(2) + 1e-6


def test_sampling_frequencies_match_softmax_of_head():
  decisions = (Decision("x", 4), Decision("y", 2))
  params = controller.init(jax.random.key(7), decisions, PEAKY)
  p = _one_step_probs(params, decisions, 0, PEAKY)
  assert p.max() - p.min() > 0.1  # non-uniform
  m = 4000
  tokens, _, _ = controller.sample(params, jax.random.key(8), plan=(choice(0),),
                                   decisions=decisions, cfg=PEAKY, m=m)
  freq = np.bincount(np.asarray(tokens)[:, 0], minlength=4) / m
  se = np.sqrt(p * (1 - p) / m)
  assert np.all(np.abs(freq - p) < 4.5 * se), (freq, p)
  # Padding of decision y (2 choices, padded to 4) is never sampled.
  ty, _, _ = controller.sample(params, jax.random.key(9), plan=(choice(1),), decisions=decisions,
                               cfg=PEAKY, m=2000)
  assert set(np.unique(np.asarray(ty))) == {0, 1}


def test_sampling_matches_log_prob_on_whole_sequences_with_skip_bits():
  """Joint check: the 144-sequence empirical distribution matches exp(log_prob)."""
  params = controller.init(jax.random.key(10), TINY_DECISIONS, PEAKY)
  seqs = _all_sequences(TINY_PLAN, TINY_DECISIONS)
  p = _probs(params, seqs, TINY_PLAN, TINY_DECISIONS, PEAKY)
  m = 20000
  tokens, _, _ = controller.sample(params, jax.random.key(11), plan=TINY_PLAN,
                                   decisions=TINY_DECISIONS, cfg=PEAKY, m=m)
  tokens = np.asarray(tokens)
  assert tokens.shape == (m, 6)
  # map each sampled row to its index in the enumeration
  index = {tuple(s): i for i, s in enumerate(seqs)}
  idx = np.array([index[tuple(t)] for t in tokens])
  freq = np.bincount(idx, minlength=len(seqs)) / m
  tv = 0.5 * np.abs(freq - p).sum()
  assert tv < 0.06, tv  # sampling noise alone gives ~0.03 here


def test_skip_probability_follows_paper_formula():
  """P(j -> i) = sigmoid(v^T tanh(W_prev h_j + W_curr h_i)), with h the LSTM output at the anchors.

  Re-derives the log-prob of the plan (choice, anchor(0), choice, anchor(1)) step by step with the
  controller's own LSTM cell, feeding: go -> embed(token) -> anchor_embed -> embed(token).
  """
  decisions = (Decision("x", 3),)
  plan = (choice(0), anchor(0), choice(0), anchor(1))
  params = controller.init(jax.random.key(12), decisions, PEAKY)
  P = jax.tree.map(np.asarray, params)
  zeros = np.zeros((1, 35), np.float32)
  state = ((zeros, zeros), (zeros, zeros))

  def cell(x, state):
    out, state = controller._lstm(params["lstm"], jnp.asarray(x)[None], state)
    return np.asarray(out[0], np.float64), state

  def log_softmax(z):
    z = z - z.max()
    return z - np.log(np.exp(z).sum())

  for a, b, bit in itertools.product(range(3), range(3), range(2)):
    out0, st = cell(P["go"], state)
    lp = log_softmax(out0 @ P["head_w_DxHxC"][0] + P["head_b_DxC"][0])[a]
    h0, st = cell(P["embed_DxCxH"][0][a], st)             # anchor of layer 0: no bits
    out2, st = cell(P["anchor_embed"], st)                 # no skip chosen: just the embedding
    lp += log_softmax(out2 @ P["head_w_DxHxC"][0] + P["head_b_DxC"][0])[b]
    h1, st = cell(P["embed_DxCxH"][0][b], st)              # anchor of layer 1
    attn = P["v_H"] @ np.tanh(h0 @ P["w_prev_HxH"] + h1 @ P["w_curr_HxH"])
    p_skip = 1 / (1 + np.exp(-attn))
    lp += np.log(p_skip if bit else 1 - p_skip)
    got, _ = controller.log_prob(params, np.array([[a, b, bit]], np.int32), plan=plan,
                                 decisions=decisions, cfg=PEAKY)
    assert float(got[0]) == pytest.approx(lp, abs=1e-4), (a, b, bit)


def test_skip_bits_are_fair_coins_when_v_is_zero():
  space = CNNSpace()
  plan = space.plan(4)
  params = controller.init(jax.random.key(13), space.decisions)
  params = dict(params, v_H=jnp.zeros_like(params["v_H"]))
  m = 3000
  tokens, _, _ = controller.sample(params, jax.random.key(14), plan=plan,
                                   decisions=space.decisions, m=m)
  tokens = np.asarray(tokens)
  bit_cols = [6, 10, 11, 15, 16, 17]  # per layer: 3 choices then the layer's i bits
  assert tokens.shape[1] == 18
  freq = tokens[:, bit_cols].mean(0)
  assert np.all(np.abs(freq - 0.5) < 0.04), freq
  # With v = 0 the bit's log-prob is log(1/2) whatever its value: on a plan that ends with the
  # anchor of layer 1, the two values of the last bit have equal log-probs.
  last = space.plan(2)
  assert last[-1] == anchor(1)
  tt = np.array([[0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1]], np.int32)
  lp, _ = controller.log_prob(params, tt, plan=last, decisions=space.decisions)
  assert float(lp[0]) == pytest.approx(float(lp[1]), abs=1e-6)


def test_sampled_token_and_skips_are_fed_to_later_steps():
  """p(second choice | first choice) depends on the first choice; same for a skip bit."""
  decisions = (Decision("x", 3),)
  params = controller.init(jax.random.key(15), decisions, PEAKY)
  two = (choice(0), choice(0))
  seqs = _all_sequences(two, decisions)
  p_joint = _probs(params, seqs, two, decisions, PEAKY).reshape(3, 3)
  p_first = _one_step_probs(params, decisions, 0, PEAKY)
  np.testing.assert_allclose(p_joint.sum(1), p_first, atol=1e-6)   # marginal = one-step plan
  cond = p_joint / p_first[:, None]
  assert np.abs(cond[0] - cond[1]).max() > 0.01
  # a skip bit changes what the next choice sees
  plan = (choice(0), anchor(0), choice(0), anchor(1), choice(0))
  t = np.array([[0, 0, bit, c] for bit in range(2) for c in range(3)], np.int32)
  p = _probs(params, t, plan, decisions, PEAKY).reshape(2, 3)
  cond_bit = p / p.sum(1, keepdims=True)   # p(c | bit), the common prefix cancels
  assert np.abs(cond_bit[0] - cond_bit[1]).max() > 0.01


# ----------------------------------------------------------------------------------------------
# keys, logit shaping, shapes


def test_same_key_same_tokens_different_key_different_tokens():
  space = CNNSpace()
  plan = space.plan(4)
  params = controller.init(jax.random.key(16), space.decisions)
  kw = dict(plan=plan, decisions=space.decisions, m=8)
  t1, lp1, _ = controller.sample(params, jax.random.key(17), **kw)
  t2, lp2, _ = controller.sample(params, jax.random.key(17), **kw)
  t3, _, _ = controller.sample(params, jax.random.key(18), **kw)
  np.testing.assert_array_equal(t1, t2)
  np.testing.assert_array_equal(lp1, lp2)
  assert not np.array_equal(np.asarray(t1), np.asarray(t3))
  # the 8 rows of one batch are distinct draws too
  assert len({tuple(r) for r in np.asarray(t1)}) == 8


def _bias_only_params(decisions, bias_row, d=0):
  """Params whose head for decision d has logits exactly ``bias_row`` (head weights zeroed)."""
  params = controller.init(jax.random.key(19), decisions)
  w = params["head_w_DxHxC"].at[d].set(0.0)
  b = params["head_b_DxC"].at[d, :len(bias_row)].set(jnp.asarray(bias_row, jnp.float32))
  return dict(params, head_w_DxHxC=w, head_b_DxC=b)


def test_tanh_constant_and_temperature_exact_on_known_logits():
  decisions = (Decision("x", 3),)
  logits = np.array([3.0, -1.0, 0.5])
  params = _bias_only_params(decisions, logits)

  def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()

  np.testing.assert_allclose(_one_step_probs(params, decisions), softmax(logits), atol=1e-6)
  cfg = controller.ControllerConfig(tanh_constant=2.5)
  np.testing.assert_allclose(_one_step_probs(params, decisions, cfg=cfg),
                             softmax(2.5 * np.tanh(logits)), atol=1e-6)
  cfg = controller.ControllerConfig(temperature=4.0)
  np.testing.assert_allclose(_one_step_probs(params, decisions, cfg=cfg),
                             softmax(logits / 4.0), atol=1e-6)
  # both: temperature first, then tanh
  cfg = controller.ControllerConfig(temperature=2.0, tanh_constant=1.5)
  np.testing.assert_allclose(_one_step_probs(params, decisions, cfg=cfg),
                             softmax(1.5 * np.tanh(logits / 2.0)), atol=1e-6)


def test_tanh_constant_bounds_probabilities_of_huge_params():
  decisions = (Decision("x", 2),)
  params = controller.init(jax.random.key(20), decisions, controller.ControllerConfig(init_scale=50.))
  p_raw = _one_step_probs(params, decisions)
  lo, hi = 1 / (1 + np.exp(2.0)), 1 / (1 + np.exp(-2.0))   # sigmoid(-2), sigmoid(2)
  assert p_raw.min() < lo  # unbounded logits: a near-deterministic head
  cfg = controller.ControllerConfig(tanh_constant=1.0)
  p = _one_step_probs(params, decisions, cfg=cfg)
  assert np.all((p >= lo - 1e-6) & (p <= hi + 1e-6)), p
  # skip bits are bounded too: each bit prob in [sigmoid(-1), sigmoid(1)]
  plan = (choice(0), anchor(0), choice(0), anchor(1))
  seqs = _all_sequences(plan, decisions)
  lp, _ = controller.log_prob(params, seqs, plan=plan, decisions=decisions, cfg=cfg)
  lsig = lambda z: -np.log1p(np.exp(-z))
  lp = np.asarray(lp)
  assert np.all(lp >= 2 * lsig(-2.0) + lsig(-1.0) - 1e-5)
  assert np.all(lp <= 2 * lsig(2.0) + lsig(1.0) + 1e-5)
  lp_raw, _ = controller.log_prob(params, seqs, plan=plan, decisions=decisions)
  assert np.asarray(lp_raw).min() < 2 * lsig(-2.0) + lsig(-1.0)


def test_large_temperature_gives_near_uniform_distribution():
  decisions = (Decision("x", 4),)
  params = controller.init(jax.random.key(21), decisions, PEAKY)
  p = _one_step_probs(params, decisions)
  assert np.abs(p - 0.25).max() > 0.05
  p_hot = _one_step_probs(params, decisions, cfg=controller.ControllerConfig(temperature=1000.0))
  assert np.abs(p_hot - 0.25).max() < 0.002
  # log-prob differences are logit differences, scaled by 1/T
  p_t = _one_step_probs(params, decisions, cfg=controller.ControllerConfig(temperature=3.0))
  np.testing.assert_allclose(np.log(p_t / p_t[0]), np.log(p / p[0]) / 3.0, atol=1e-5)


def test_sample_shapes_for_several_batch_sizes_and_depths():
  space = CNNSpace(predict_strides=True)
  params = controller.init(jax.random.key(22), space.decisions)
  for depth in (2, 3):
    plan = space.plan(depth)
    for m in (1, 8):
      tokens, logp, ent = controller.sample(params, jax.random.key(m), plan=plan,
                                            decisions=space.decisions, m=m)
      assert tokens.shape == (m, base.num_tokens(plan))
      assert logp.shape == ent.shape == (m,)
      assert np.all(np.asarray(ent) > 0)
  assert base.num_tokens(space.plan(2)) == 11 and base.num_tokens(space.plan(3)) == 18


def test_plan_without_anchors_and_with_single_step():
  decisions = (Decision("x", 5),)
  params = controller.init(jax.random.key(23), decisions)
  tokens, logp, _ = controller.sample(params, jax.random.key(0), plan=(choice(0),) * 3,
                                      decisions=decisions, m=4)
  assert tokens.shape == (4, 3)
  lp, _ = controller.log_prob(params, tokens, plan=(choice(0),) * 3, decisions=decisions)
  np.testing.assert_allclose(lp, logp, atol=1e-6)


def test_anchor_layer_without_earlier_anchors_is_normalised_or_rejected():
  """Plan (choice, anchor(2)): the anchor emits 2 bits (base.num_tokens says so).

  The controller sizes its bit arrays by the number of anchors in the plan (1 here), so bit 1 is
  gathered/scattered out of range: sampling copies bit 0 into bit 1 and log_prob ignores bit 1, so
  the 12 sequences' probabilities sum to 2. Either a normalised distribution or an explicit
  ValueError for such a plan is acceptable; a silently wrong one is not.
  """
  decisions = (Decision("x", 3),)
  plan = (choice(0), anchor(2))
  params = controller.init(jax.random.key(24), decisions, PEAKY)
  seqs = _all_sequences(plan, decisions)
  assert seqs.shape == (12, 3)
  try:
    p = _probs(params, seqs, plan, decisions, PEAKY)
  except ValueError:
    return
  assert p.sum() == pytest.approx(1.0, abs=1e-5)
