"""Training throughput (tokens/s) of the PTB language model: nas_jax vs PyTorch nn.LSTM.

  python benchmarks/lm_throughput.py [--segments 150] [--rounds 2] [--json benchmarks/results/lm_throughput.json]

Both train Zaremba et al.'s small configuration (2x200 LSTM, vocab 10k, batch 20, BPTT 20, SGD with
clipping, loss summed over time / batch) on the same PTB segments, one after the other, repeated
``--rounds`` times (the medians are reported), after a warm-up. PyTorch is measured only when it is
installed (``pip install torch``); it is not a dependency of nas_jax.
"""

import json
import os
import statistics
import time

from absl import app, flags

_SEGMENTS = flags.DEFINE_integer("segments", 150, "Timed training segments per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Alternating rounds.")
_HIDDEN = flags.DEFINE_integer("hidden", 200, "Hidden and embedding size.")
_JSON = flags.DEFINE_string("json", "benchmarks/results/lm_throughput.json", "Output JSON.")


def jax_runner(corpus, hidden, segments):
  import jax  # pylint: disable=g-import-not-at-top
  from nas_jax import lm, ptb  # pylint: disable=g-import-not-at-top
  cfg = lm.LMConfig(hidden_size=hidden, embed_size=hidden)
  cell = lm.lstm_cell()
  params = lm.init_params(jax.random.key(0), len(corpus.vocab), cell, cfg)
  step = jax.jit(lm.make_train_step(cell, cfg), donate_argnums=(0, 2))
  ops = jax.numpy.zeros((0,), jax.numpy.int32)
  segs = list(ptb.segments(ptb.batchify(corpus.train, cfg.batch_size), cfg.bptt))[:segments + 5]
  state = {"params": params, "carry": lm.init_carry(cell, cfg, cfg.batch_size)}

  def run(batches):
    nll = None
    for x, y in batches:
      state["params"], state["carry"], nll = step(state["params"], ops, state["carry"], x, y,
                                                  1.0, None)
    jax.block_until_ready(nll)

  run(segs[:5])  # compile + warm-up
  def timed():
    t0 = time.perf_counter()
    run(segs[5:])
    return segments * cfg.batch_size * cfg.bptt / (time.perf_counter() - t0)
  return timed


def torch_runner(corpus, hidden, segments):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  from torch import nn  # pylint: disable=g-import-not-at-top
  from nas_jax import ptb  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  vocab, batch, bptt = len(corpus.vocab), 20, 20

  class Model(nn.Module):
    def __init__(self):
      super().__init__()
      self.embed = nn.Embedding(vocab, hidden)
      self.lstm = nn.LSTM(hidden, hidden, 2)
      self.out = nn.Linear(hidden, vocab)
      for p in self.parameters():
        nn.init.uniform_(p, -0.1, 0.1)

    def forward(self, x, state):
      h, state = self.lstm(self.embed(x), state)
      return self.out(h), state

  model = Model()
  opt = torch.optim.SGD(model.parameters(), lr=1.0)
  segs = list(ptb.segments(ptb.batchify(corpus.train, batch), bptt))[:segments + 5]
  segs = [(torch.from_numpy(x.T.copy()).long(), torch.from_numpy(y.T.copy()).long())
          for x, y in segs]
  state = [None]

  def run(batches):
    for x, y in batches:
      st = state[0]
      if st is not None:
        st = tuple(s.detach() for s in st)
      logits, st = model(x, st)
      loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1),
                                         reduction="sum") / batch
      opt.zero_grad()
      loss.backward()
      nn.utils.clip_grad_norm_(model.parameters(), 5.0)
      opt.step()
      state[0] = st

  run(segs[:5])
  def timed():
    t0 = time.perf_counter()
    run(segs[5:])
    return segments * batch * bptt / (time.perf_counter() - t0)
  return timed


def main(argv):
  del argv
  from nas_jax import ptb  # pylint: disable=g-import-not-at-top
  corpus = ptb.load_ptb("word")
  runners = {"nas_jax (JAX)": jax_runner(corpus, _HIDDEN.value, _SEGMENTS.value)}
  t = torch_runner(corpus, _HIDDEN.value, _SEGMENTS.value)
  if t is not None:
    runners["PyTorch nn.LSTM"] = t
  rates = {name: [] for name in runners}
  for _ in range(_ROUNDS.value):
    for name, timed in runners.items():
      rates[name].append(timed())
  results = {name: {"tokens_per_sec_median": statistics.median(r), "runs": r}
             for name, r in rates.items()}
  print(f"PTB small LM (2x{_HIDDEN.value} LSTM, batch 20, BPTT 20), {_SEGMENTS.value} segments x "
        f"{_ROUNDS.value} rounds")
  print("| implementation | tokens/s (median) | runs |")
  print("|---|---|---|")
  for name, r in results.items():
    print(f"| {name} | {r['tokens_per_sec_median']:.0f} | "
          + ", ".join(f"{x:.0f}" for x in r["runs"]) + " |")
  if len(results) == 2:
    a, b = (r["tokens_per_sec_median"] for r in results.values())
    print(f"ratio nas_jax / PyTorch: {a / b:.2f}")
    results["ratio_jax_over_torch"] = a / b
  if _JSON.value:
    os.makedirs(os.path.dirname(_JSON.value) or ".", exist_ok=True)
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
