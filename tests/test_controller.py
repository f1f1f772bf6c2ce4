"""Tests for nas_jax.core.controller: init, sampling, teacher-forced log-probs, logit shaping.

The central checks are exact: the log-probabilities of *all* token sequences of a small plan sum to
one (softmax masking and Bernoulli skip terms), sampling frequencies match exp(log_prob), and the
skip-connection probability follows the paper's sigmoid(v^T tanh(W_prev h_j + W_curr h_i)).

``sample`` and ``log_prob`` compile once per (plan, decisions, cfg, batch size); the tests share
those static arguments where they can (``cfg`` is left at its default: ``init_scale`` only matters
to ``init``) so that the file stays fast on a small CPU.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax.core import controller
from nas_jax.spaces import base
from nas_jax.spaces.base import Decision, anchor, choice
from nas_jax.spaces.cnn import CNNSpace

DEFAULT = controller.ControllerConfig()
# Weights large enough that the distributions are far from uniform (used for init only).
PEAKY = controller.ControllerConfig(init_scale=1.0)

# Two decision types; "y" (2 choices) is padded to 4 in the stacked heads.
DECS = (Decision("x", 4), Decision("y", 2))
ONE_STEP = (choice(0),)
# Two layers with one skip bit: tokens [x, x, bit]; 4 * 4 * 2 = 32 sequences.
TWO_LAYERS = (choice(0), anchor(0), choice(0), anchor(1))

# Three layers; the anchors at layers 1 and 2 emit 1 and 2 skip bits: 6 tokens, 4*2*2*4*4 = 256
# sequences.
TINY_PLAN = (choice(0), anchor(0), choice(1), anchor(1), choice(0), anchor(2))

# controller.log_prob runs op by op when called outside jit (the search calls it inside the jitted
# update); jitting it here keeps the many small calls of these tests fast.
_log_prob = jax.jit(controller.log_prob, static_argnames=("plan", "decisions", "cfg"))


def _all_sequences(plan, decisions):
  """Every flat token vector of ``plan`` (choice tokens, then one 0/1 per skip bit)."""
  ranges = []
  for s in plan:
    if s.kind == base.CHOICE:
      ranges.append(range(decisions[s.decision].num_choices))
    else:
      ranges += [range(2)] * s.layer
  return np.array(list(itertools.product(*ranges)), np.int32).reshape(-1, base.num_tokens(plan))


def _probs(params, tokens, plan, decisions, cfg=DEFAULT):
  logp, _ = _log_prob(params, tokens, plan=plan, decisions=decisions, cfg=cfg)
  return np.exp(np.asarray(logp, np.float64))


def _one_step(params, cfg=DEFAULT):
  """(probabilities of the 4 choices of decision x, entropy) under ONE_STEP."""
  logp, ent = _log_prob(params, np.arange(4, dtype=np.int32)[:, None], plan=ONE_STEP,
                        decisions=DECS, cfg=cfg)
  return np.exp(np.asarray(logp, np.float64)), float(ent[0])


def _softmax(z):
  e = np.exp(z - z.max())
  return e / e.sum()


def _log_sigmoid(z):
  return -np.log1p(np.exp(-z))


# ----------------------------------------------------------------------------------------------
# init


def test_init_uniform_in_init_scale_and_shapes():
  space = CNNSpace()
  params = controller.init(jax.random.key(0), space.decisions)
  leaves = jax.tree.leaves(params)
  assert len(leaves) == 2 * 2 + 8  # two LSTM layers (w, b) + go, anchor_embed, heads, attention
  allv = np.concatenate([np.ravel(x) for x in leaves])
  assert allv.size > 10000
  assert np.all(np.abs(allv) <= 0.08)
  # U(-0.08, 0.08): the extremes are approached and the mean is ~0
  assert allv.max() > 0.079 and allv.min() < -0.079
  assert abs(allv.mean()) < 0.003
  assert np.std(allv) == pytest.approx(0.16 / np.sqrt(12), rel=0.05)
  h = 35
  assert params["lstm"][0]["w"].shape == (2 * h, 4 * h)
  assert params["lstm"][1]["b"].shape == (4 * h,)
  assert params["head_w_DxHxC"].shape == (3, h, 4)   # filter_height, filter_width, num_filters
  assert params["head_b_DxC"].shape == (3, 4)
  assert params["embed_DxCxH"].shape == (3, 4, h)
  assert params["w_prev_HxH"].shape == params["w_curr_HxH"].shape == (h, h)
  assert params["v_H"].shape == (h,)
  small_cfg = controller.ControllerConfig(hidden_size=8, num_lstm_layers=1)
  small = jax.eval_shape(lambda k: controller.init(k, space.decisions, small_cfg),
                         jax.random.key(0))
  assert len(small["lstm"]) == 1 and small["lstm"][0]["w"].shape == (16, 32)
  assert small["embed_DxCxH"].shape == (3, 4, 8)


def test_init_scale_and_shapes_follow_decisions_only():
  # Stride heads have 3 choices; the stacked heads are padded to the largest count (4).
  strided = CNNSpace(predict_strides=True)
  params = controller.init(jax.random.key(1), strided.decisions,
                           controller.ControllerConfig(init_scale=0.01))
  assert params["head_w_DxHxC"].shape == (5, 35, 4)
  assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(params)) <= 0.01
  # Deeper spaces need no new parameters: the same init drives plans of any depth.
  deep = CNNSpace(predict_strides=True, start_layers=30)
  assert deep.decisions == strided.decisions
  deep_params = jax.eval_shape(lambda k: controller.init(k, deep.decisions), jax.random.key(1))
  assert jax.tree.map(jnp.shape, deep_params) == jax.tree.map(jnp.shape, params)
  for depth in (2, 3):  # same static arguments as the shapes test below: one compile each
    plan = strided.plan(depth)
    tokens, logp, _ = controller.sample(params, jax.random.key(depth), plan=plan,
                                        decisions=strided.decisions, m=8)
    assert tokens.shape == (8, base.num_tokens(plan)) == (8, 5 * depth + depth * (depth - 1) // 2)
    assert np.all(np.isfinite(np.asarray(logp)))


# ----------------------------------------------------------------------------------------------
# sample vs log_prob


def test_sample_and_log_prob_agree_on_cnn_plan():
  space = CNNSpace()
  plan, decisions = space.plan(4), space.decisions
  params = controller.init(jax.random.key(2), decisions, PEAKY)
  tokens, logp, ent = controller.sample(params, jax.random.key(3), plan=plan, decisions=decisions,
                                        m=16)
  assert tokens.shape == (16, base.num_tokens(plan)) == (16, 4 * 3 + 6)
  assert tokens.dtype == jnp.int32
  lp2, ent2 = controller.log_prob(params, tokens, plan=plan, decisions=decisions)  # public, unjitted
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
  # the scores are per sample: different samples, different log-probs
  assert len(np.unique(np.round(np.asarray(logp), 4))) > 8


def test_log_prob_is_a_normalised_distribution():
  params = controller.init(jax.random.key(4), DECS, PEAKY)
  seqs = _all_sequences(TINY_PLAN, DECS)
  assert seqs.shape == (256, 6)
  p = _probs(params, seqs, TINY_PLAN, DECS)
  assert p.sum() == pytest.approx(1.0, abs=1e-5)
  assert p.max() / p.min() > 3  # far from uniform, so the check is not trivially met


@pytest.mark.parametrize("cfg", [controller.ControllerConfig(temperature=2.5),
                                 controller.ControllerConfig(tanh_constant=1.5)])
def test_log_prob_is_normalised_under_config_options(cfg):
  params = controller.init(jax.random.key(5), DECS, PEAKY)
  p = _probs(params, _all_sequences(TINY_PLAN, DECS), TINY_PLAN, DECS, cfg)
  assert p.sum() == pytest.approx(1.0, abs=1e-5)


def test_entropy_of_one_choice_step_matches_its_probabilities():
  params = controller.init(jax.random.key(6), DECS, PEAKY)
  p, ent = _one_step(params)
  assert p.sum() == pytest.approx(1.0, abs=1e-6)
  assert ent == pytest.approx(-(p * np.log(p)).sum(), abs=1e-5)
  assert ent < np.log(4) - 0.05
  # Decision y is padded to 4 choices: the padding gets no probability, so p(0) + p(1) = 1.
  py = _probs(params, np.array([[0], [1]], np.int32), (choice(1),), DECS)
  assert py.sum() == pytest.approx(1.0, abs=1e-6)


def test_sampling_frequencies_match_softmax_of_head():
  params = controller.init(jax.random.key(7), DECS, PEAKY)
  p, _ = _one_step(params)
  assert p.max() - p.min() > 0.1  # non-uniform
  m = 4000
  # The first step's marginal is the one-step plan's distribution; the second step is decision y.
  tokens, _, _ = controller.sample(params, jax.random.key(8), plan=(choice(0), choice(1)),
                                   decisions=DECS, m=m)
  tokens = np.asarray(tokens)
  freq = np.bincount(tokens[:, 0], minlength=4) / m
  se = np.sqrt(p * (1 - p) / m)
  assert np.all(np.abs(freq - p) < 4.5 * se), (freq, p)
  # The padding of decision y (choices 2 and 3) is never sampled.
  assert set(np.unique(tokens[:, 1])) == {0, 1}


def test_sampling_matches_log_prob_on_whole_sequences_with_skip_bits():
  """Joint check: the empirical distribution over all 256 sequences matches exp(log_prob)."""
  params = controller.init(jax.random.key(10), DECS, PEAKY)
  seqs = _all_sequences(TINY_PLAN, DECS)
  p = _probs(params, seqs, TINY_PLAN, DECS)
  m = 20000
  tokens, _, _ = controller.sample(params, jax.random.key(11), plan=TINY_PLAN,
                                   decisions=DECS, m=m)
  tokens = np.asarray(tokens)
  assert tokens.shape == (m, 6)
  index = {tuple(s): i for i, s in enumerate(seqs)}
  idx = np.array([index[tuple(t)] for t in tokens])   # KeyError if a token is out of range
  freq = np.bincount(idx, minlength=len(seqs)) / m
  tv = 0.5 * np.abs(freq - p).sum()
  assert tv < 0.06, tv  # sampling noise alone gives about 0.03 here


def test_skip_probability_follows_paper_formula():
  """P(j -> i) = sigmoid(v^T tanh(W_prev h_j + W_curr h_i)), h = LSTM output at the anchors.

  Re-derives log p of every sequence of TWO_LAYERS step by step with the controller's own LSTM
  cell, feeding: go -> embed(token) -> anchor_embed (no skip yet) -> embed(token).
  """
  params = controller.init(jax.random.key(12), DECS, PEAKY)
  P = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  lstm = jax.jit(controller._lstm)
  zeros = np.zeros((1, 35), np.float32)
  state0 = ((zeros, zeros), (zeros, zeros))

  def cell(x, state):
    out, state = lstm(params["lstm"], jnp.asarray(x, jnp.float32)[None], state)
    return np.asarray(out[0], np.float64), state

  def log_softmax(z):
    z = z - z.max()
    return z - np.log(np.exp(z).sum())

  seqs = _all_sequences(TWO_LAYERS, DECS)
  assert seqs.shape == (32, 3)
  got, _ = _log_prob(params, seqs, plan=TWO_LAYERS, decisions=DECS)
  want, p_skips = [], []
  for a, b, bit in seqs:
    out0, st = cell(P["go"], state0)
    lp = log_softmax(out0 @ P["head_w_DxHxC"][0] + P["head_b_DxC"][0])[a]
    h0, st = cell(P["embed_DxCxH"][0][a], st)             # anchor of layer 0: no bits
    out2, st = cell(P["anchor_embed"], st)                 # no skip possible: just the embedding
    lp += log_softmax(out2 @ P["head_w_DxHxC"][0] + P["head_b_DxC"][0])[b]
    h1, st = cell(P["embed_DxCxH"][0][b], st)              # anchor of layer 1
    attn = P["v_H"] @ np.tanh(h0 @ P["w_prev_HxH"] + h1 @ P["w_curr_HxH"])
    p_skip = 1 / (1 + np.exp(-attn))
    p_skips.append(p_skip)
    want.append(lp + np.log(p_skip if bit else 1 - p_skip))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)
  assert np.ptp(p_skips) > 0.01  # the skip probability really depends on the context


def test_skip_bits_are_fair_coins_when_v_is_zero():
  space = CNNSpace()
  params = controller.init(jax.random.key(13), space.decisions)
  params = dict(params, v_H=jnp.zeros_like(params["v_H"]))
  tokens, _, _ = controller.sample(params, jax.random.key(14), plan=space.plan(4),
                                   decisions=space.decisions, m=4000)
  tokens = np.asarray(tokens)
  assert tokens.shape[1] == 18
  bit_cols = [6, 10, 11, 15, 16, 17]  # per layer i: 3 choices then its i bits
  freq = tokens[:, bit_cols].mean(0)
  assert np.all(np.abs(freq - 0.5) < 0.035), freq   # 4.4 standard errors
  # With v = 0 a bit's log-prob is log(1/2) whatever its value: on a plan ending with the anchor
  # of layer 1, flipping that last bit leaves the log-prob unchanged.
  dparams = controller.init(jax.random.key(13), DECS)
  dparams = dict(dparams, v_H=jnp.zeros_like(dparams["v_H"]))
  lp, _ = _log_prob(dparams, _all_sequences(TWO_LAYERS, DECS), plan=TWO_LAYERS, decisions=DECS)
  lp = np.asarray(lp)
  np.testing.assert_allclose(lp[0::2], lp[1::2], atol=1e-6)


def test_sampled_token_and_skips_are_fed_to_later_steps():
  """p(second choice | first choice) depends on the first choice; same for a skip bit."""
  params = controller.init(jax.random.key(15), DECS, PEAKY)
  seqs = _all_sequences(TWO_LAYERS, DECS)        # rows (a, b, bit), bit fastest
  p = _probs(params, seqs, TWO_LAYERS, DECS).reshape(4, 4, 2)
  p_first, _ = _one_step(params)
  np.testing.assert_allclose(p.sum((1, 2)), p_first, atol=1e-6)   # marginal = one-step plan
  cond = p.sum(2) / p_first[:, None]                               # p(b | a)
  np.testing.assert_allclose(cond.sum(1), 1.0, atol=1e-6)
  assert np.abs(cond[0] - cond[1]).max() > 0.01
  # a skip bit changes what the next choice sees: p(c | a, b, bit) for a 5-step plan
  plan = TWO_LAYERS + (choice(0),)
  t = np.array([[0, 0, bit, c] for bit in range(2) for c in range(4)], np.int32)
  q = _probs(params, t, plan, DECS).reshape(2, 4)
  cond_bit = q / q.sum(1, keepdims=True)   # the common prefix (a=0, b=0) cancels
  assert np.abs(cond_bit[0] - cond_bit[1]).max() > 0.01


# ----------------------------------------------------------------------------------------------
# keys, logit shaping, shapes


def test_same_key_same_tokens_different_key_different_tokens():
  space = CNNSpace()
  params = controller.init(jax.random.key(16), space.decisions)
  kw = dict(plan=space.plan(4), decisions=space.decisions, m=16)
  t1, lp1, _ = controller.sample(params, jax.random.key(17), **kw)
  t2, lp2, _ = controller.sample(params, jax.random.key(17), **kw)
  t3, _, _ = controller.sample(params, jax.random.key(18), **kw)
  np.testing.assert_array_equal(t1, t2)
  np.testing.assert_array_equal(lp1, lp2)
  assert not np.array_equal(np.asarray(t1), np.asarray(t3))
  # the rows of one batch are distinct draws too
  assert len({tuple(r) for r in np.asarray(t1)}) == 16


def _bias_only_params(bias_row):
  """Params whose head for decision x has logits exactly ``bias_row`` (head weights zeroed)."""
  params = controller.init(jax.random.key(19), DECS)
  w = params["head_w_DxHxC"].at[0].set(0.0)
  b = params["head_b_DxC"].at[0].set(jnp.asarray(bias_row, jnp.float32))
  return dict(params, head_w_DxHxC=w, head_b_DxC=b)


def test_tanh_constant_and_temperature_exact_on_known_logits():
  logits = np.array([3.0, -1.0, 0.5, 0.0])
  params = _bias_only_params(logits)
  np.testing.assert_allclose(_one_step(params)[0], _softmax(logits), atol=1e-6)
  cfg = controller.ControllerConfig(tanh_constant=2.5)
  np.testing.assert_allclose(_one_step(params, cfg)[0], _softmax(2.5 * np.tanh(logits)),
                             atol=1e-6)
  cfg = controller.ControllerConfig(temperature=4.0)
  np.testing.assert_allclose(_one_step(params, cfg)[0], _softmax(logits / 4.0), atol=1e-6)


def test_tanh_constant_bounds_probabilities_of_huge_params():
  params = controller.init(jax.random.key(20), DECS, controller.ControllerConfig(init_scale=50.))
  # With |logit| <= c and 4 choices: e^-c / (e^-c + 3 e^c) <= p <= e^c / (e^c + 3 e^-c).
  c = 1.0
  lo, hi = np.exp(-c) / (np.exp(-c) + 3 * np.exp(c)), np.exp(c) / (np.exp(c) + 3 * np.exp(-c))
  p_raw, _ = _one_step(params)
  assert p_raw.min() < lo * 1e-3  # unbounded logits: some choices get (almost) no mass
  cfg = controller.ControllerConfig(tanh_constant=c)
  p, _ = _one_step(params, cfg)
  assert np.all((p >= lo - 1e-6) & (p <= hi + 1e-6)), p
  # Skip bits are bounded too: each in [sigmoid(-c), sigmoid(c)], so every one of the 32
  # sequences of TWO_LAYERS has 2 log lo + log sigmoid(-c) <= log p <= 2 log hi + log sigmoid(c).
  seqs = _all_sequences(TWO_LAYERS, DECS)
  lp = np.asarray(_log_prob(params, seqs, plan=TWO_LAYERS, decisions=DECS, cfg=cfg)[0])
  assert np.all(lp >= 2 * np.log(lo) + _log_sigmoid(-c) - 1e-5)
  assert np.all(lp <= 2 * np.log(hi) + _log_sigmoid(c) + 1e-5)
  lp_raw = np.asarray(_log_prob(params, seqs, plan=TWO_LAYERS, decisions=DECS)[0])
  assert lp_raw.min() < 2 * np.log(lo) + _log_sigmoid(-c)


def test_large_temperature_gives_near_uniform_distribution():
  params = controller.init(jax.random.key(21), DECS, PEAKY)
  p, _ = _one_step(params)
  assert np.abs(p - 0.25).max() > 0.05
  p_hot, ent_hot = _one_step(params, controller.ControllerConfig(temperature=1000.0))
  assert np.abs(p_hot - 0.25).max() < 0.002
  assert ent_hot == pytest.approx(np.log(4), abs=1e-4)
  # log-prob differences are logit differences, scaled by 1/T
  np.testing.assert_allclose(np.log(p_hot / p_hot[0]), np.log(p / p[0]) / 1000.0, atol=1e-5)


def test_sample_shapes_for_several_batch_sizes_and_depths():
  space = CNNSpace(predict_strides=True)
  params = controller.init(jax.random.key(22), space.decisions)
  for depth, m in ((2, 1), (2, 8), (3, 8)):
    plan = space.plan(depth)
    tokens, logp, ent = controller.sample(params, jax.random.key(m), plan=plan,
                                          decisions=space.decisions, m=m)
    assert tokens.shape == (m, base.num_tokens(plan))
    assert logp.shape == ent.shape == (m,)
    assert np.all(np.asarray(ent) > 0)
  assert base.num_tokens(space.plan(2)) == 11 and base.num_tokens(space.plan(3)) == 18


def test_plan_without_anchors():
  """CNNSpace(skip_connections=False) plans have no anchor steps."""
  plan = (choice(0), choice(1), choice(0))
  params = controller.init(jax.random.key(23), DECS, PEAKY)
  tokens, logp, _ = controller.sample(params, jax.random.key(0), plan=plan, decisions=DECS, m=8)
  assert tokens.shape == (8, 3)
  lp, _ = _log_prob(params, tokens, plan=plan, decisions=DECS)
  np.testing.assert_allclose(lp, logp, atol=1e-5)


def test_anchor_layer_without_earlier_anchors_is_normalised_or_rejected():
  """Plan (choice, anchor(2)): the anchor emits 2 bits (base.num_tokens says so).

  The controller sizes its bit arrays by the number of anchors in the plan (1 here), so bit 1 is
  gathered/scattered out of range: sampling copies bit 0 into bit 1 and log_prob ignores bit 1, so
  the 16 sequences' probabilities sum to 2. Either a normalised distribution or an explicit
  ValueError for such a plan is acceptable; a silently wrong one is not.
  """
  plan = (choice(0), anchor(2))
  params = controller.init(jax.random.key(24), DECS, PEAKY)
  seqs = _all_sequences(plan, DECS)
  assert seqs.shape == (16, 3)
  try:
    p = _probs(params, seqs, plan, DECS)
  except ValueError:
    return
  assert p.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_a_deepening_search_compiles_sample_and_update_once_per_bucket():
  from nas_jax.core import reinforce  # pylint: disable=import-outside-toplevel
  space = CNNSpace(start_layers=3)
  cfg = reinforce.ReinforceConfig(controller=controller.ControllerConfig(hidden_size=11))
  state = reinforce.init_state(jax.random.key(0), space.decisions, cfg)
  sizes = lambda: (controller._sample_padded._cache_size(), reinforce._update._cache_size())
  before = sizes()
  tokens_by_depth = {}
  for depth in (3, 4, 5):   # 12, 16 and 20 plan steps: all in the first bucket of 32
    plan = space.plan(depth)
    tokens, logp, _ = controller.sample(state.params, jax.random.key(depth), plan=plan,
                                        decisions=space.decisions, cfg=cfg.controller, m=7)
    # Padding changes nothing: the sampled tokens score the same log-prob re-scored alone.
    lp, _ = controller.log_prob(state.params, tokens, plan=plan, decisions=space.decisions,
                                cfg=cfg.controller)
    np.testing.assert_allclose(lp, logp, atol=1e-5)
    state, metrics = reinforce.update(state, tokens, jnp.linspace(0, 1, 7), plan=plan,
                                      decisions=space.decisions, cfg=cfg)
    assert np.isfinite(float(metrics["loss"]))
    tokens_by_depth[depth] = np.asarray(tokens)
  assert sizes() == (before[0] + 1, before[1] + 1)
  # A plan past the bucket (9 layers: 36 steps) compiles once more.
  controller.sample(state.params, jax.random.key(9), plan=space.plan(9),
                    decisions=space.decisions, cfg=cfg.controller, m=7)
  assert sizes()[0] == before[0] + 2



def test_sampled_tokens_do_not_depend_on_the_padding(monkeypatch):
  space = CNNSpace(start_layers=3)
  plan = tuple(space.plan(3))
  params = controller.init(jax.random.key(0), space.decisions, PEAKY)
  kw = dict(decisions=space.decisions, cfg=DEFAULT, m=8)
  tokens = {}
  for bucket in (32, 96):
    monkeypatch.setattr(controller, "STEP_BUCKET", bucket)
    monkeypatch.setattr(controller, "ANCHOR_BUCKET", bucket // 4)
    pa = controller._PlanArrays(plan, space.decisions)
    assert (pa.padded_steps, pa.num_anchors, pa.num_steps) == (bucket, bucket // 4, 12)
    tok, bits, logp, _ = controller._sample_padded(params, jax.random.key(5), pa.xs,
                                                   n_anchor=pa.num_anchors, **kw)
    tokens[bucket] = (pa.to_flat(tok, bits), np.asarray(logp))
  assert tokens[32][0][:, pa.bit_of >= 0].any()   # some skip connections were drawn
  np.testing.assert_array_equal(tokens[32][0], tokens[96][0])
  np.testing.assert_allclose(tokens[32][1], tokens[96][1], atol=1e-5)


# ----------------------------------------------------------------------------------------------
# gated steps: a count token (e.g. the depth) that shortens the plan

# decision "n" (3 choices) is the count: layer l of up to 3 (a width "x" and an anchor each) is
# active iff n >= l, i.e. depth n + 1. 1 + 2 * 3 steps, 1 + 3 + 0 + 1 + 2 = 7 tokens.
COUNT_DECS = (Decision("n", 3), Decision("x", 4))
DEPTH_PLAN = (choice(0),) + tuple(base.gated(s, 0, l) if l else s for l in range(3)
                                  for s in (choice(1), anchor(l)))


_log_prob_padded = jax.jit(controller.log_prob_padded, static_argnames=("decisions", "cfg"))


def _truncated(depth):
  """The plan of a fixed ``depth`` (no gates): what DEPTH_PLAN is at count ``depth - 1``."""
  return (choice(0),) + tuple(s for l in range(depth) for s in (choice(1), anchor(l)))


def test_gated_steps_score_only_when_active_by_hand():
  """Bias-only heads make each step's distribution known: p_n = softmax(b_n), p_x = softmax(b_x).

  Plan (n, x gated by n >= 1): log p(0, t) = log p_n[0] and H = H(p_n) whatever t; log p(1, t) =
  log p_n[1] + log p_x[t] and H = H(p_n) + H(p_x).
  """
  decs = (Decision("n", 2), Decision("x", 4))
  plan = (choice(0), base.gated(choice(1), 0, 1))
  b_n, b_x = np.array([0.5, -1.0, 0.0, 0.0]), np.array([2.0, 0.0, -1.0, 1.0])
  params = controller.init(jax.random.key(30), decs)
  params = dict(params, head_w_DxHxC=jnp.zeros_like(params["head_w_DxHxC"]),
                head_b_DxC=jnp.asarray(np.stack([b_n, b_x]), jnp.float32))
  p_n, p_x = _softmax(b_n[:2]), _softmax(b_x)
  h = lambda p: -(p * np.log(p)).sum()
  # Sampled tokens (the masked one comes out as 0) after the hand-checked ones: one compile.
  sampled, slp, sent = controller.sample(params, jax.random.key(31), plan=plan, decisions=decs,
                                         m=60)
  sampled = np.asarray(sampled)
  assert set(sampled[:, 0]) == {0, 1} and np.all(sampled[sampled[:, 0] == 0, 1] == 0)
  assert len(set(sampled[sampled[:, 0] == 1, 1])) > 1
  tokens = np.concatenate([np.array([[0, 0], [0, 3], [1, 0], [1, 3]], np.int32), sampled])
  lp, ent = _log_prob(params, tokens, plan=plan, decisions=decs)
  np.testing.assert_allclose(lp[:4], np.log([p_n[0], p_n[0], p_n[1] * p_x[0], p_n[1] * p_x[3]]),
                             atol=1e-6)
  np.testing.assert_allclose(ent[:4], [h(p_n), h(p_n), h(p_n) + h(p_x), h(p_n) + h(p_x)],
                             atol=1e-6)
  np.testing.assert_allclose(slp, lp[4:], atol=1e-6)   # sampling and re-scoring agree
  np.testing.assert_allclose(sent, ent[4:], atol=1e-6)
  np.testing.assert_array_equal(base.active_steps(plan, [0, 3]), [True, False])
  np.testing.assert_array_equal(base.active_tokens(DEPTH_PLAN, [1, 2, 3, 1, 0, 1, 1]),
                                [True, True, True, True, False, False, False])


def test_a_shortened_sample_scores_as_the_plan_of_its_depth():
  """Masked steps are skipped, not just unscored: a sample of depth d gets the log-prob (and
  entropy) its active tokens get under the ungated plan of depth d, whatever its masked tokens."""
  params = controller.init(jax.random.key(32), COUNT_DECS, PEAKY)
  tokens, logp, ent = controller.sample(params, jax.random.key(33), plan=DEPTH_PLAN,
                                        decisions=COUNT_DECS, m=64)
  tokens = np.asarray(tokens)
  assert set(tokens[:, 0]) == {0, 1, 2}
  # Any values in the masked positions score the same (bit for bit).
  on_T = np.stack([base.active_tokens(DEPTH_PLAN, t) for t in tokens])
  junk = np.where(on_T, tokens, 1).astype(np.int32)
  assert np.any(junk != tokens)
  lp, en = _log_prob(params, tokens, plan=DEPTH_PLAN, decisions=COUNT_DECS)
  lp_junk, en_junk = _log_prob(params, junk, plan=DEPTH_PLAN, decisions=COUNT_DECS)
  np.testing.assert_array_equal(lp, lp_junk)
  np.testing.assert_array_equal(en, en_junk)
  np.testing.assert_allclose(lp, logp, atol=1e-5)
  for depth in (1, 2, 3):
    rows = tokens[:, 0] == depth - 1
    n = base.num_tokens(_truncated(depth))
    assert np.all(tokens[rows, n:] == 0)                     # masked tokens are 0
    np.testing.assert_array_equal(on_T[rows].sum(1), n)
    # every row scored under the plan of this depth (the three plans share one compilation), the
    # rows of this depth compared
    forced, xs = controller.plan_inputs(tokens[:, :n], _truncated(depth), COUNT_DECS)
    want_lp, want_ent = _log_prob_padded(params, forced, xs, decisions=COUNT_DECS)
    np.testing.assert_allclose(np.asarray(logp)[rows], np.asarray(want_lp)[rows], atol=1e-5)
    np.testing.assert_allclose(np.asarray(ent)[rows], np.asarray(want_ent)[rows], atol=1e-5)


def test_always_open_gates_change_nothing():
  """Gates that never close (at_least=0) give the ungated plan's tokens and log-probs: the gated
  scan computes what the plain one does."""
  plain = _truncated(3)
  open_gates = (plain[0],) + tuple(base.gated(s, 0, 0) for s in plain[1:])
  params = controller.init(jax.random.key(34), COUNT_DECS, PEAKY)
  kw = dict(decisions=COUNT_DECS, m=16)
  t1, lp1, e1 = controller.sample(params, jax.random.key(35), plan=plain, **kw)
  t2, lp2, e2 = controller.sample(params, jax.random.key(35), plan=open_gates, **kw)
  np.testing.assert_array_equal(t1, t2)
  np.testing.assert_allclose(lp1, lp2, atol=1e-6)
  np.testing.assert_allclose(e1, e2, atol=1e-6)


def test_a_gate_must_be_an_earlier_choice_step():
  params = controller.init(jax.random.key(36), COUNT_DECS)
  for plan in ((base.gated(choice(1), 1, 1), choice(0)),     # itself / a later step
               (choice(1), anchor(0), base.gated(choice(1), 1, 1))):   # an anchor step
    with pytest.raises(ValueError, match="not an earlier choice step"):
      controller.sample(params, jax.random.key(0), plan=plan, decisions=COUNT_DECS)
