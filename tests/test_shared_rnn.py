"""The weight-sharing recurrent-cell search: a shared-weights cell is the exact cell LM, the
training step averages the sampled cells' gradients, the controller learns a planted cell under
shared weights, the :quick configs run end to end, an interrupted search resumes to the
uninterrupted history, and the summary retrains with train_lm.py.
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax import config as config_lib
from nas_jax.configs import lm_ptb_cpu, rnn_ptb_shared, rnn_ptb_shared_cpu
from nas_jax import experiment
from nas_jax.spaces import rnn_cell
from nas_jax.tools import analysis
from nas_jax.training import lm, lm_cells, optim, ptb, shared_rnn

SPACE = rnn_cell.RNNCellSpace(base=2)
VOCAB = 11


def _corpus(n=6000, vocab=VOCAB, seed=0):
  """A cyclic 'language' (token t+1 = t + 1 mod vocab, 5% noise): fake PTB, no loading."""
  rng = np.random.default_rng(seed)
  ids = np.arange(n) % vocab
  noise = rng.random(n) < 0.05
  ids[noise] = rng.integers(0, vocab, noise.sum())
  ids = ids.astype(np.int32)
  return ptb.Corpus(ids, ids[:2000], ids[2000:3000], tuple(str(i) for i in range(vocab)), "char")


def _archs(space, n, seed):
  rng = np.random.default_rng(seed)
  plan = space.plan()
  out = []
  for _ in range(n):
    toks = [rng.integers(space.decisions[s.decision].num_choices) for s in plan]
    out.append(space.decode(plan, np.array(toks, np.int32)))
  return out


def _jit(fn):
  return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0})


@pytest.mark.parametrize("dropout", [0.0, 0.3])   # eval mode; train mode (variational dropout)
def test_shared_cells_are_the_exact_cell_lm_with_the_same_weights(dropout):
  space = rnn_cell.RNNCellSpace(base=4, activations=("identity", "tanh", "sigmoid", "relu"))
  cfg = lm.LMConfig(num_layers=2, hidden_size=4, embed_size=3, dropout=dropout,
                    variational=True, embed_dropout=dropout / 2, bptt=5)
  archs = _archs(space, 3, 0)
  params = _jit(lambda k: shared_rnn.init(space, cfg, VOCAB, k))(jax.random.key(1))
  x = jax.random.randint(jax.random.key(2), (2, 5), 0, VOCAB)
  carry = jax.tree.map(lambda a: jax.random.normal(jax.random.key(3), a.shape),
                       shared_rnn.zero_carry(cfg, len(archs), 2))
  keys = jax.random.split(jax.random.key(4), len(archs)) if dropout else None
  cell = shared_rnn.cell(space, cfg)
  logits, out = _jit(lambda p, o, c, x, k: shared_rnn.apply_children(p, o, c, x, cell, cfg, k))(
      params, shared_rnn.encode(space, archs), carry, x, keys)
  # The exact child: the LM of lm.py with its own copy of the weights, one cell at a time.
  exact_cell = lm_cells.searched_lm_cell(space, cfg.init_scale)
  for k, arch in enumerate(archs):
    copied = jax.tree.map(np.array, params)
    child_carry = jax.tree.map(lambda a: a[k], carry)
    want, want_carry = _jit(lambda p, o, c, x, key: lm.apply(p, o, c, x, exact_cell, cfg, key))(
        copied, space.ops(arch), child_carry, x, None if keys is None else keys[k])
    np.testing.assert_allclose(logits[k], want, atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(jax.tree.map(lambda a: a[k], out)),
                    jax.tree.leaves(want_carry)):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  if not dropout:   # and the LM written out by hand around rnn_cell.cell_apply
    by_hand = _jit(lambda p, o, c, x: _by_hand(p, space, o, c, x))
    for k, arch in enumerate(archs):   # the first 2 time steps (a small program to compile)
      np.testing.assert_allclose(
          logits[k, :2], by_hand(params, space.ops(arch), jax.tree.map(lambda a: a[k], carry),
                                 x[:, :2]), atol=1e-5, rtol=1e-5)


def _by_hand(params, space, ops, carry, x_BxT):
  """Embedding, then per layer the cell step by step (``rnn_cell.cell_apply``), then softmax."""
  h_seq = [params["embed"][x_BxT[:, t]] for t in range(x_BxT.shape[1])]
  for layer, state in zip(params["layers"], carry):
    out = []
    for x_t in h_seq:
      state, h = rnn_cell.cell_apply(layer, ops, state, x_t, combinations=space.combinations,
                                     activations=space.activations)
      out.append(h)
    h_seq = out
  return jnp.stack([h @ params["softmax_w"] + params["softmax_b"] for h in h_seq])


def test_training_step_averages_the_gradients_of_the_sampled_cells():
  """2 cells on a window of 4 streams: cell k runs streams 2k and 2k+1 (the batch is split among
  the cells); the step is the mean of the two exact cell LMs' gradients."""
  cfg = lm.LMConfig(num_layers=1, hidden_size=4, embed_size=4, bptt=6)
  sh = config_lib.SharedConfig(enabled=True, lr_schedule="constant", learning_rate=0.5,
                               momentum=0.0, nesterov=False, weight_decay=0.0, grad_clip=0.0,
                               fast_compile=True)
  progs = shared_rnn.programs(SPACE, cfg, VOCAB, sh, 10, 10)
  archs = _archs(SPACE, 2, 5)
  params = _jit(lambda k: shared_rnn.init(SPACE, cfg, VOCAB, k))(jax.random.key(0))
  before = jax.tree.map(np.array, params)
  ids = ptb.batchify(_corpus().train[:200], 4)
  x, y = ids[:, :6], ids[:, 1:7]
  opt = optim.shared_optimizer(sh, 10, 10).init(params)
  after, _, carry, nll, ok = progs.train_step(params, opt, shared_rnn.zero_carry(cfg, 2, 2),
                                              shared_rnn.encode(SPACE, archs), x, y,
                                              jax.random.key(1), 0)
  assert bool(ok) and nll.shape == (2,)
  cell = shared_rnn.cell(SPACE, cfg)

  def child_loss(p, ops, rows):   # the per-token NLL of one exact cell LM from a zero state
    logits, _ = lm.apply(p, ops, lm.init_carry(cell, cfg, 2), x[rows], cell, cfg)
    return lm._nll_sum(logits, y[rows]) / y[rows].size  # pylint: disable=protected-access
  exact = [_jit(jax.value_and_grad(lambda p, o, r=rows: child_loss(p, o, r)))(before,
                                                                            SPACE.ops(a))
           for a, rows in zip(archs, (slice(0, 2), slice(2, 4)))]
  np.testing.assert_allclose(nll, [float(v) for v, _ in exact], rtol=1e-5)
  grads = [g for _, g in exact]
  want = jax.tree.map(lambda p, g0, g1: p - 0.5 * (g0 + g1) / 2, before, *grads)
  for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
  # A non-finite step moves no weight and hands on a zero state.
  poisoned = jax.tree.map(lambda a: a.at[0].set(jnp.nan), shared_rnn.zero_carry(cfg, 2, 2))
  kept, _, carry, _, ok = progs.train_step(jax.tree.map(jnp.asarray, before),
                                           optim.shared_optimizer(sh, 10, 10).init(
                                               params), poisoned,
                                           shared_rnn.encode(SPACE, archs), x, y,
                                           jax.random.key(1), 0)
  assert not bool(ok)
  for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)
  assert all(np.all(np.asarray(c)[0] == 0) for c in jax.tree.leaves(carry))


# ----------------------------------------------------------------------------------------------
# Searches (a fake corpus; the :quick configs' shapes)


@pytest.fixture(scope="module")
def corpus():
  return _corpus()


def _quick(steps=2, searcher="reinforce"):
  cfg = rnn_ptb_shared_cpu.get_config("quick")
  cfg.shared.controller_steps = steps
  cfg.search.searcher = searcher
  return cfg


def _rows(workdir):
  return [{k: v for k, v in r.items() if k != "seconds"}
          for r in analysis.read_history(os.path.join(workdir, "history.jsonl"))]


def _steps(workdir):
  return [{k: v for k, v in s.items() if not k.endswith("seconds") and k != "children"}
          for s in analysis.read_history(os.path.join(workdir, "steps.jsonl"))]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, corpus):
  workdir = tmp_path_factory.mktemp("quick_cells")
  return workdir, experiment.run_search(_quick(), str(workdir), dataset=corpus)


def test_quick_cell_search_writes_a_workdir_like_the_exact_cell_search(quick_run):
  tmp_path, result = quick_run
  cfg = _quick()
  sh, m = cfg.shared, cfg.search.children_per_step
  rows = analysis.read_history(str(tmp_path / "history.jsonl"))
  per_phase = sh.controller_steps * m
  assert [(r["step"], r["index"]) for r in rows] == (
      [(p, i) for p in range(sh.epochs) for i in range(per_phase)] +
      [(sh.epochs, k) for k in range(sh.derive_samples)])
  assert [r["evaluation"] for r in rows] == (["shared"] * (sh.epochs * per_phase) +
                                             ["derive"] * sh.derive_samples)
  for r in rows:
    assert not r["failed"] and r["val_ppl"] > 1
    assert r["reward"] == pytest.approx(cfg.lm_child.reward_constant / r["val_ppl"] ** 2)
    assert r["param_count"] == rows[0]["param_count"] > 0 and len(r["arch"]["nodes"]) == 3
  summary = json.loads((tmp_path / "summary.json").read_text())
  derived = [r for r in rows if r["evaluation"] == "derive"]
  assert summary["best"]["reward"] == max(r["reward"] for r in derived)
  assert summary["best"] == result.best and result.metric.name == "val_ppl"
  assert summary["metric"] == "val_ppl" and summary["evaluation"] == "derive"
  assert len({tuple(r["tokens"]) for r in summary["top_k"]}) == len(summary["top_k"]) >= 1
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["metric.higher_is_better"] is False
  assert analysis.load_metric(str(tmp_path)).name == "val_ppl"
  steps = analysis.read_history(str(tmp_path / "steps.jsonl"))
  assert [s["evaluation"] for s in steps] == ["shared"] * sh.epochs + ["derive"]
  assert all(np.isfinite(s["train_loss"]) and s["train_skipped"] == 0 for s in steps[:-1])


def test_the_derived_cell_is_what_train_lm_retrains(quick_run):
  path = str(quick_run[0] / "summary.json")
  best = json.loads(open(path).read())["best"]
  cfg = lm_ptb_cpu.get_config("quick")
  cell, ops, desc = lm_cells.from_name(path, cfg.lm.init_scale)
  assert desc == best["description"]
  np.testing.assert_array_equal(ops, SPACE.ops(SPACE.from_json(best)))
  lm.LMConfig(**cfg.lm.to_dict())   # the retrain config is a valid LMConfig
  assert cell.init(jax.random.key(0), 3, 2)["recurrent_kernel"].shape == (2, 2 * 2)


def test_interrupted_cell_search_resumes_to_the_uninterrupted_history(tmp_path, corpus,
                                                                      quick_run):
  cfg = _quick()
  whole, broken = str(quick_run[0]), str(tmp_path / "broken")
  calls = []

  def interrupt_after(n):
    def reward(arch, ppl):
      del arch
      if len(calls) >= n:
        raise KeyboardInterrupt("simulated kill")
      calls.append(1)
      return shared_rnn.reward(math.log(ppl), cfg.lm_child.reward_constant)  # the executor's
    return reward
  # Mid phase 1 (after checkpoint 1, the hidden state carried in it).
  with pytest.raises(KeyboardInterrupt):
    experiment.run_search(cfg, broken, dataset=corpus, reward_fn=interrupt_after(6))
  experiment.run_search(cfg, broken, dataset=corpus)
  assert _rows(broken) == _rows(whole) and len(_rows(whole)) == 11
  assert _steps(broken) == _steps(whole) and len(_steps(whole)) == 3


@pytest.mark.slow   # 60 controller steps (35 s on the loaded 2-core CPU)
def test_controller_learns_a_planted_cell_under_shared_weights(tmp_path, corpus):
  cfg = _quick(steps=30)   # the quick run's programs and sampler: only the learning rate differs
  cfg.controller.learning_rate = 0.05
  cfg.shared.derive_samples = 8
  # Every node and the inject mul/sigmoid, c_t and the inject at the root.
  planted = rnn_cell.CellArch((rnn_cell.NodeOp("mul", "sigmoid"),) * 3,
                              rnn_cell.NodeOp("mul", "sigmoid"), 2, 2)
  want = SPACE.encode(planted)

  def reward(arch, ppl):
    del ppl
    return float(np.mean(SPACE.encode(arch) == want))
  experiment.run_search(cfg, str(tmp_path), dataset=corpus, reward_fn=reward)
  rows = analysis.read_history(str(tmp_path / "history.jsonl"))
  first = np.mean([r["reward"] for r in rows[:8]])
  derived = [r for r in rows if r["evaluation"] == "derive"]
  assert np.mean([r["reward"] for r in derived]) > 0.85 > first + 0.3
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["best"]["tokens"] == want.tolist()


@pytest.mark.slow   # a second LM (word level, tied) to compile
def test_random_search_and_the_word_level_quick_config(tmp_path, corpus):
  cfg = rnn_ptb_shared.get_config("quick")
  cfg.search.searcher = "random"
  word = corpus._replace(level="word")
  result = experiment.run_search(cfg, str(tmp_path), dataset=word)
  rows = analysis.read_history(str(tmp_path / "history.jsonl"))
  sh, m = cfg.shared, cfg.search.children_per_step
  assert len(rows) == sh.epochs * sh.controller_steps * m + sh.derive_samples
  assert result.best["evaluation"] == "derive" and result.metric.name == "val_ppl"
  assert "loss" not in analysis.read_history(str(tmp_path / "steps.jsonl"))[0]


def test_what_the_shared_cell_network_cannot_do_is_a_config_error(corpus):
  for field, value, message in (("shared.reward_power", 3.0, "reward_constant / ppl"),
                                ("lm_child.tie_embeddings", True, "embed_size == hidden_size")):
    cfg = rnn_ptb_shared_cpu.get_config("quick")
    section, name = field.split(".")
    cfg[section][name] = value
    if name == "tie_embeddings":
      cfg.lm_child.embed_size = 4
    with pytest.raises(config_lib.ConfigError, match=rf"^config\.{field}: .*{message}"):
      config_lib.parse(cfg)
  cfg = rnn_ptb_shared_cpu.get_config("quick")
  cfg.shared.eval_batch_size = 500
  with pytest.raises(config_lib.ConfigError, match=r"^config\.lm_child\.max_eval_tokens: "):
    experiment.run_search(cfg, "/nonexistent/never/written", dataset=corpus)
