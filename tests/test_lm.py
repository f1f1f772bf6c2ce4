"""The language-model trainer: state carry, learning, perplexity, dropout."""

import dataclasses
import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nas_jax.training import lm, lm_cells, optim, ptb

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
  assert [optim.lm_learning_rate(cfg, e) for e in (1, 4, 5, 6, 13)] == [1.0, 1.0, 0.5, 0.25, 0.5 ** 9]


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


# --- optimizer, weight decay and the paper-size configs (lm_ptb_medium.py, lm_ptb_nas.py) ---

# One cell object and equal configs: the tests share lm._jitted's compiled steps (compiling
# dominates their time).
CELL = lm.lstm_cell()
SGD = lm.LMConfig(num_layers=1, hidden_size=8, embed_size=8, tie_embeddings=True, batch_size=4,
                  bptt=10, max_grad_norm=1.0)
SGD_WD = dataclasses.replace(SGD, weight_decay=0.05)
ADAM_WD = dataclasses.replace(SGD_WD, optimizer="adam")


def _step(cfg, state, x, lr):
  """One jitted train step (lm._jitted's, which donates its inputs: they are copied)."""
  state = jax.tree.map(jnp.array, state)
  out, _, nll = lm._jitted(CELL, cfg)[0](state, OPS, lm.init_carry(CELL, cfg, x.shape[0]), x,
                                         jnp.roll(x, 1, axis=1), lr, None)
  return out, nll


def _data(cfg):
  params = lm.init_params(jax.random.key(0), 7, CELL, cfg)
  return params, jax.random.randint(jax.random.key(1), (cfg.batch_size, cfg.bptt), 0, 7)


def test_default_optimizer_is_clipped_sgd_and_weight_decay_is_decoupled():
  assert (lm.LMConfig().optimizer, lm.LMConfig().weight_decay) == ("sgd", 0.0)
  params, x = _data(SGD)
  leaves = lambda t: np.concatenate([np.ravel(v) for v in jax.tree.leaves(t)])
  p = leaves(params)
  d1, dh = (p - leaves(_step(SGD, params, x, lr)[0]) for lr in (1.0, 0.5))
  np.testing.assert_allclose(d1, 2 * dh, atol=1e-6)     # no state: the step is linear in lr
  assert np.linalg.norm(d1) == pytest.approx(1.0, rel=1e-4)  # clipped to max_grad_norm exactly
  # Decoupled: the decay term is added after clipping, p <- p - lr * (clip(g) + wd * p).
  np.testing.assert_allclose(leaves(_step(SGD_WD, params, x, 1.0)[0]), p - d1 - 0.05 * p,
                             atol=1e-6)


def test_adam_step_is_optax_adamw_after_clipping():
  params, x = _data(ADAM_WD)

  @jax.jit
  def grads(p):
    def loss(p):
      logits, _ = lm.apply(p, OPS, lm.init_carry(CELL, ADAM_WD, x.shape[0]), x, CELL, ADAM_WD)
      return lm._nll_sum(logits, jnp.roll(x, 1, axis=1)) / x.shape[0]
    return jax.grad(loss)(p)

  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(0.01, weight_decay=0.05))
  state, ref, opt = lm.init_train_state(params, ADAM_WD), params, tx.init(params)
  for _ in range(3):
    state, _ = _step(ADAM_WD, state, x, 0.01)
    updates, opt = tx.update(grads(ref), opt, ref)
    ref = optax.apply_updates(ref, updates)
  assert isinstance(state, lm.AdamState) and int(state.opt_state.count) == 3
  for q, r in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref)):
    np.testing.assert_allclose(q, r, rtol=1e-4, atol=1e-6)


def test_adam_and_weight_decay_train_differently_and_decay_shrinks_the_weights():
  stream = ptb.batchify(tiny_corpus().train[:3001], SGD.batch_size)   # 75 steps
  params, _ = _data(SGD)
  runs = {}
  for name, cfg, lr in [("sgd", SGD, 0.5), ("sgd_wd", SGD_WD, 0.5), ("adam_wd", ADAM_WD, 0.02)]:
    state, nlls = lm.init_train_state(params, cfg), []
    for x, _ in ptb.segments(stream, cfg.bptt):
      state, nll = _step(cfg, state, x, lr)
      nlls.append(float(nll) / x.size)
    runs[name] = (lm.state_params(state, cfg), np.mean(nlls[:10]), np.mean(nlls[-10:]))
  norm = {k: float(optax.tree.norm(p)) for k, (p, _, _) in runs.items()}
  assert norm["sgd_wd"] < 0.9 * norm["sgd"], norm
  for name, (_, first, last) in runs.items():   # all learn the cycle (uniform over 7: log 7 = 1.95)
    assert last < 0.6 * first, (name, first, last)
  assert runs["adam_wd"][2] != runs["sgd_wd"][2]


def test_optimizer_fields_are_checked():
  with pytest.raises(ValueError, match="optimizer"):
    lm.LMConfig(optimizer="rmsprop")
  with pytest.raises(ValueError, match="weight_decay"):
    lm.LMConfig(weight_decay=-1.0)
  for kw in (dict(optimizer="adam"), dict(weight_decay=1e-5)):  # both update every embedding row
    with pytest.raises(ValueError, match="sparse_embedding"):
      lm.make_train_step(lm.lstm_cell(), lm.LMConfig(**kw), sparse_embedding=True)


def _config(name, arg=None):
  module = importlib.import_module(f"nas_jax.configs.{name}")
  c = module.get_config(arg)
  cfg = lm.LMConfig(**c.lm.to_dict())
  cell, ops, _ = lm_cells.from_name(c.cell, cfg.init_scale)
  return cfg, cell, ops


@pytest.mark.parametrize("name, arg, count", [
    ("lm_ptb_medium", None, 19_775_200),   # Zaremba et al.'s medium: ~20M (PAPER.md)
    ("lm_ptb_nas", None, 24_945_040),      # the paper's 25M NAS model, tied embeddings
    ("lm_ptb_nas", "large", 53_848_400)])  # its 54M one
def test_paper_size_configs_build_at_their_parameter_counts(name, arg, count):
  cfg, cell, _ = _config(name, arg)
  shapes = jax.eval_shape(lambda k: lm.init_params(k, 10_000, cell, cfg), jax.random.key(0))
  assert sum(math.prod(s.shape) for s in jax.tree.leaves(shapes)) == count


def test_medium_learning_rate_schedule_of_zaremba():
  cfg, _, _ = _config("lm_ptb_medium")
  lrs = [optim.lm_learning_rate(cfg, e) for e in (1, 6, 7, 8, 39)]
  np.testing.assert_allclose(lrs, [1.0, 1.0, 1 / 1.2, 1 / 1.44, 1.2 ** -33], rtol=1e-12)


@pytest.fixture(scope="module")
def ptb_word():
  return ptb.load_ptb("word")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lm_ptb_medium", "lm_ptb_nas"])
def test_quick_configs_train_far_below_uniform_on_ptb(name, ptb_word):
  cfg, cell, ops = _config(name, "quick")
  params = lm.init_params(jax.random.fold_in(jax.random.key(0), 0), len(ptb_word.vocab), cell, cfg)
  ppl0 = lm.perplexity(params, ops, ptb_word.valid, cell, cfg, cfg.eval_batch_size,
                       max_tokens=cfg.max_eval_tokens)
  result = lm.train(ptb_word, cell, cfg, jax.random.key(0), ops=ops, evaluate_test=False)
  assert 9_000 < ppl0 < 11_000          # uniform over the 10k vocabulary is 10,000
  assert result.valid_ppl < 0.2 * ppl0, (ppl0, result.valid_ppl)
