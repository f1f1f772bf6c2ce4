"""The language-model trainer: state carry, learning, perplexity, dropout."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax.training import lm, ptb

OPS = jnp.zeros((0,), jnp.int32)


def tiny_corpus(n=4000, vocab=7, seed=0):
  """A deterministic cyclic 'language': token t+1 = (t + 1) % vocab, with rare noise."""
  rng = np.random.default_rng(seed)
  ids = np.arange(n) % vocab
  noise = rng.random(n) < 0.02
  ids[noise] = rng.integers(0, vocab, noise.sum())
  ids = ids.astype(np.int32)
  return ptb.Corpus(ids, ids[:1000], ids[1000:2000], tuple(str(i) for i in range(vocab)), "word")


def test_two_segments_with_carried_state_equal_one_long_segment():
  cell, cfg = lm.lstm_cell(), lm.LMConfig(hidden_size=8, embed_size=8)
  params = lm.init_params(jax.random.key(0), 11, cell, cfg)
  x = jax.random.randint(jax.random.key(1), (3, 10), 0, 11)
  carry = lm.init_carry(cell, cfg, 3)
  whole, c_whole = lm.apply(params, OPS, carry, x, cell, cfg)
  first, c1 = lm.apply(params, OPS, carry, x[:, :4], cell, cfg)
  second, c2 = lm.apply(params, OPS, c1, x[:, 4:], cell, cfg)
  np.testing.assert_allclose(np.concatenate([first, second]), whole, atol=1e-5)
  np.testing.assert_allclose(c2[1][1], c_whole[1][1], atol=1e-5)


def test_lstm_step_matches_the_equations():
  cell = lm.lstm_cell()
  params = cell.init(jax.random.key(0), 3, 2)
  x = np.array([[0.5, -1.0, 2.0]], np.float32)
  c0, h0 = np.array([[0.1, -0.2]], np.float32), np.array([[0.3, 0.4]], np.float32)
  (c, h), out = cell.step(params, OPS, (c0, h0), cell.project(params, x), 1.0)
  z = x @ np.asarray(params["wx"]) + h0 @ np.asarray(params["wh"]) + np.asarray(params["b"])
  i, g, f, o = np.split(z, 4, axis=-1)
  sig = lambda v: 1 / (1 + np.exp(-v))
  c_ref = sig(f) * c0 + sig(i) * np.tanh(g)
  np.testing.assert_allclose(c, c_ref, atol=1e-6)
  np.testing.assert_allclose(h, sig(o) * np.tanh(c_ref), atol=1e-6)
  np.testing.assert_array_equal(h, out)


@pytest.mark.slow
def test_untrained_model_is_near_uniform_and_training_learns_the_pattern():
  corpus = tiny_corpus()
  cell = lm.lstm_cell()
  cfg = lm.LMConfig(hidden_size=16, embed_size=16, batch_size=4, bptt=10, epochs=3,
                    decay_after_epoch=10, eval_batch_size=4)
  params = lm.init_params(jax.random.key(0), 7, cell, cfg)
  ppl0 = lm.perplexity(params, OPS, corpus.valid, cell, cfg, 4)
  assert 6.0 < ppl0 < 8.0  # uniform over 7 tokens is 7
  result = lm.train(corpus, cell, cfg, jax.random.key(0))
  assert result.valid_ppl < 1.5  # the next token is determined 98% of the time
  assert result.test_ppl < 1.5
  assert [h["epoch"] for h in result.history] == [1, 2, 3]
  assert result.history[-1]["train_ppl"] < result.history[0]["train_ppl"]


def test_learning_rate_schedule_of_zaremba_small():
  cfg = lm.LMConfig()
  assert [lm.learning_rate(cfg, e) for e in (1, 4, 5, 6, 13)] == [1.0, 1.0, 0.5, 0.25, 0.5 ** 9]


@pytest.mark.parametrize("variational", [False, True])
def test_dropout_changes_training_but_not_evaluation(variational):
  cell = lm.lstm_cell()
  cfg = lm.LMConfig(hidden_size=8, embed_size=8, dropout=0.5, variational=variational,
                    embed_dropout=0.1 if variational else 0.0)
  params = lm.init_params(jax.random.key(0), 11, cell, cfg)
  x = jax.random.randint(jax.random.key(1), (2, 6), 0, 11)
  carry = lm.init_carry(cell, cfg, 2)
  a, _ = lm.apply(params, OPS, carry, x, cell, cfg, jax.random.key(2))
  b, _ = lm.apply(params, OPS, carry, x, cell, cfg, jax.random.key(3))
  e1, _ = lm.apply(params, OPS, carry, x, cell, cfg)
  e2, _ = lm.apply(params, OPS, carry, x, cell, cfg)
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(e1, e2)


def test_variational_masks_are_shared_over_time():
  # Make each step's output depend on the current input only (no recurrent weight, forget gate
  # shut); with the same token at every step, outputs then differ over time only through dropout.
  cell = lm.lstm_cell()
  h = 8
  base = dict(num_layers=1, hidden_size=h, embed_size=h, dropout=0.5)
  params = lm.init_params(jax.random.key(0), 5, cell, lm.LMConfig(**base))
  layer = params["layers"][0]
  layer["wh"] = jnp.zeros_like(layer["wh"])
  layer["b"] = layer["b"].at[2 * h:3 * h].set(-1e4)  # gates are i, g, f, o
  x = jnp.full((2, 6), 3)
  carry = lm.init_carry(cell, lm.LMConfig(**base), 2)
  var, _ = lm.apply(params, OPS, carry, x, cell, lm.LMConfig(**base, variational=True),
                    jax.random.key(5))
  zar, _ = lm.apply(params, OPS, carry, x, cell, lm.LMConfig(**base), jax.random.key(5))
  np.testing.assert_allclose(var, np.broadcast_to(var[:1], var.shape), atol=1e-5)
  assert np.abs(zar - zar[:1]).max() > 1e-3


@pytest.mark.slow
def test_real_ptb_quick_training_beats_a_unigram_far_below_uniform():
  corpus = ptb.load_ptb("word")
  cfg = lm.LMConfig(hidden_size=16, embed_size=16, epochs=1, max_train_tokens=200_000,
                    max_eval_tokens=4_000)
  result = lm.train(corpus, lm.lstm_cell(), cfg, jax.random.key(0), evaluate_test=False)
  # The unigram model of the tokens the LM trained on (add-one smoothing: some validation words
  # never occur in them), scored on the LM's validation targets: the streams' every id but the first.
  vocab = len(corpus.vocab)
  counts = np.bincount(corpus.train[:cfg.max_train_tokens + 1], minlength=vocab)
  p_unigram = (counts + 1.0) / (counts.sum() + vocab)
  targets = ptb.batchify(corpus.valid[:cfg.max_eval_tokens + 1], cfg.eval_batch_size)[:, 1:]
  unigram_ppl = math.exp(-np.mean(np.log(p_unigram[targets])))
  assert unigram_ppl < 1000   # uniform over the 10k vocabulary is 10000; this unigram: 811
  assert result.valid_ppl < 0.9 * unigram_ppl, (result.valid_ppl, unigram_ppl)   # LM: 689


@pytest.mark.slow
@pytest.mark.parametrize("max_grad_norm", [5.0, 0.01])   # 0.01: clipping is active
@pytest.mark.parametrize("regularised", [False, True])
def test_sparse_embedding_update_equals_the_dense_gradient_step(max_grad_norm, regularised):
  # Repeated words in the segment: their rows' gradients must be summed exactly as in the dense
  # (V x E) gradient, and the clipping norm must count each word once.
  cfg = lm.LMConfig(hidden_size=16, embed_size=12, bptt=7, batch_size=3,
                    max_grad_norm=max_grad_norm, embed_dropout=0.3 if regularised else 0.0,
                    dropout=0.2 if regularised else 0.0, variational=regularised)
  cell, vocab = lm.lstm_cell(), 11
  params = lm.init_params(jax.random.key(0), vocab, cell, cfg)
  x = jnp.asarray(np.random.RandomState(0).randint(0, 5, (3, 7)))   # 21 tokens, 5 distinct words
  y = jnp.roll(x, 1)
  carry = lm.init_carry(cell, cfg, 3)
  ops = jnp.zeros((0,), jnp.int32)
  outs = [jax.jit(lm.make_train_step(cell, cfg, sparse_embedding=s))(
      params, ops, carry, x, y, 1.0, jax.random.key(3)) for s in (False, True)]
  for dense, sparse in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
    np.testing.assert_allclose(sparse, dense, rtol=1e-5, atol=1e-7)
  changed = np.any(outs[1][0]["embed"] != params["embed"], axis=1)
  in_segment = np.isin(np.arange(vocab), np.asarray(x))
  assert not np.any(changed & ~in_segment)                # only the segment's words move ...
  if not regularised:                                     # ... all of them (word dropout may drop some)
    np.testing.assert_array_equal(changed, in_segment)


def test_sparse_embedding_needs_an_untied_embedding():
  with pytest.raises(ValueError, match="tie_embeddings"):
    lm.make_train_step(lm.lstm_cell(), lm.LMConfig(tie_embeddings=True), sparse_embedding=True)
