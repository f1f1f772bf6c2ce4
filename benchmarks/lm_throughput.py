"""Training throughput (tokens/s) of the PTB language model: nas_jax vs PyTorch nn.LSTM.

  python benchmarks/lm_throughput.py [--segments 150] [--rounds 2] [--json benchmarks/results/lm_throughput.json]

Both train Zaremba et al.'s small configuration (2x200 LSTM, vocab 10k, batch 20, BPTT 20, SGD with
clipping, loss summed over time / batch) on the same PTB segments. Each measurement is a fresh
process of this script (``--worker``) that loads, compiles, warms up and times ``--segments``
segments, so neither library's threads or heap disturb the other; the processes alternate,
``--rounds`` times, and medians are reported. Every implementation is measured with glibc's default
allocator settings and with ``nas_jax.runtime.tune_malloc()`` (heap kept, no mmap per large
buffer), which both libraries profit from. PyTorch is measured only when it is installed (``pip
install torch``); it is not a dependency of nas_jax. On a GPU machine both run on the GPU.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

import common

_SEGMENTS = flags.DEFINE_integer("segments", 150, "Timed training segments per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Alternating rounds.")
_HIDDEN = flags.DEFINE_integer("hidden", 200, "Hidden and embedding size.")
_IMPLS = flags.DEFINE_list("implementations", ["jax", "torch"], "Which to run: jax, torch.")
_WORKER = flags.DEFINE_enum("worker", None, ["jax", "torch"], "Internal: measure one "
                            "implementation in this process and print its tokens/s as JSON.")
_TUNE = flags.DEFINE_bool("tune_malloc", False, "Internal (with --worker): tune_malloc() first.")
_JSON = flags.DEFINE_string("json", "benchmarks/results/lm_throughput.json", "Output JSON.")


def jax_runner(corpus, hidden, segments):
  import jax  # pylint: disable=g-import-not-at-top
  from nas_jax.training import lm, ptb  # pylint: disable=g-import-not-at-top
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
  from nas_jax.training import ptb  # pylint: disable=g-import-not-at-top
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

  device = "cuda" if torch.cuda.is_available() else "cpu"
  model = Model().to(device)
  opt = torch.optim.SGD(model.parameters(), lr=1.0)
  segs = list(ptb.segments(ptb.batchify(corpus.train, batch), bptt))[:segments + 5]
  segs = [(torch.from_numpy(x.T.copy()).long().to(device),
           torch.from_numpy(y.T.copy()).long().to(device)) for x, y in segs]
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
    if device == "cuda":
      torch.cuda.synchronize()

  run(segs[:5])
  def timed():
    t0 = time.perf_counter()
    run(segs[5:])
    return segments * batch * bptt / (time.perf_counter() - t0)
  return timed


def worker(impl: str) -> None:
  """Measures one implementation in this process; prints {"tokens_per_sec": ...} as JSON."""
  if _TUNE.value:
    from nas_jax import runtime  # pylint: disable=g-import-not-at-top
    runtime.tune_malloc()
  from nas_jax.training import ptb  # pylint: disable=g-import-not-at-top
  corpus = ptb.load_ptb("word")
  make = jax_runner if impl == "jax" else torch_runner
  timed = make(corpus, _HIDDEN.value, _SEGMENTS.value)
  if timed is None:
    print(json.dumps({"tokens_per_sec": None}))
    return
  device = ""
  if impl == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    device = str(jax.devices()[0].device_kind)
  else:
    import torch  # pylint: disable=g-import-not-at-top
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
  print(json.dumps({"tokens_per_sec": timed(), "device": device}))


NAMES = {"jax": "nas_jax (JAX)", "torch": "PyTorch nn.LSTM"}
SETTINGS = {"default": False, "tune_malloc": True}


def measure(impl: str, tune: bool) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), f"--worker={impl}",
         f"--segments={_SEGMENTS.value}", f"--hidden={_HIDDEN.value}",
         "--tune_malloc" if tune else "--notune_malloc"]
  out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main(argv):
  del argv
  if _WORKER.value:
    worker(_WORKER.value)
    return
  impls = [i for i in ("jax", "torch") if i in _IMPLS.value]
  rates = {(i, s): [] for i in impls for s in SETTINGS}
  devices = {}
  for _ in range(_ROUNDS.value):
    for setting, tune in SETTINGS.items():
      for impl in impls:
        r = measure(impl, tune)
        if r["tokens_per_sec"] is not None:
          rates[(impl, setting)].append(r["tokens_per_sec"])
          devices[impl] = r["device"]
  rates = {k: v for k, v in rates.items() if v}
  results = {"segments": _SEGMENTS.value, "rounds": _ROUNDS.value, "devices": devices,
             "tokens_per_sec": {f"{impl}/{setting}": {"median": statistics.median(r), "runs": r}
                                for (impl, setting), r in rates.items()}}
  print(f"PTB small LM (2x{_HIDDEN.value} LSTM, batch 20, BPTT 20), {_SEGMENTS.value} segments x "
        f"{_ROUNDS.value} rounds, one process per measurement; devices: {devices}")
  print("| implementation | allocator | tokens/s (median) | runs |")
  print("|---|---|---|---|")
  for (impl, setting), r in rates.items():
    print(f"| {NAMES[impl]} | {setting} | {statistics.median(r):.0f} | "
          + ", ".join(f"{x:.0f}" for x in r) + " |")
  for setting in SETTINGS:
    if ("jax", setting) in rates and ("torch", setting) in rates:
      ratio = statistics.median(rates[("jax", setting)]) / statistics.median(rates[("torch", setting)])
      results[f"ratio_jax_over_torch/{setting}"] = ratio
      print(f"ratio nas_jax / PyTorch ({setting}): {ratio:.2f}")
  common.write_json(_JSON.value, results)


if __name__ == "__main__":
  app.run(main)
