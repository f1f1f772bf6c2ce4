"""The weight-sharing search over devices: its training and scoring steps on 1 device and on all.

  python benchmarks/shared_devices.py [--space digits|ptb] [--children_per_batch 0] [--steps 20] \
      [--json benchmarks/results/shared_devices.json]
  XLA_FLAGS=--xla_force_host_platform_device_count=4 python benchmarks/shared_devices.py   # rehearsal

For 1 device and then every local device, with the same ``children_per_batch`` N architectures
per minibatch (0: the local device count; the minibatch split among them, TuNAS's layout,
docs/distributed.md), it builds the space's shared executor (``cnn_digits_shared`` or
``rnn_ptb_shared_cpu``), compiles, and times ``--steps`` shared-weights training steps and
``--steps`` scorings of a controller step's N architectures (``search.children_per_step`` = N),
each loop alone and blocked on its last result. Prints a table (milliseconds per step, steps per
second, the speed-up over 1 device) and writes JSON. The speed-up is what a multi-GPU or TPU
machine gains; virtual CPU devices share the host's cores, so there it is a rehearsal of the
script, not a measurement.
"""

import sys
import time

from absl import app, flags

import common

_SPACE = flags.DEFINE_enum("space", "digits", ["digits", "ptb"], "The digits CNN space or the "
                           "paper's recurrent-cell space on character-level PTB.")
_N = flags.DEFINE_integer("children_per_batch", 0, "Architectures per minibatch (0: the number of "
                          "local devices).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed training steps and scorings per device count.")
_JSON = flags.DEFINE_string("json", "benchmarks/results/shared_devices.json", "Output JSON.")

CONFIGS = {"digits": "cnn_digits_shared", "ptb": "rnn_ptb_shared_cpu"}


def measure(cfg, dataset, num_devices: int, steps: int) -> dict:
  """Compile and time the executor's train_step and score on ``num_devices`` devices."""
  import jax  # pylint: disable=import-outside-toplevel
  from nas_jax import config as config_lib, experiment  # pylint: disable=import-outside-toplevel
  from nas_jax.core import searchers  # pylint: disable=import-outside-toplevel
  from nas_jax.training import shared  # pylint: disable=import-outside-toplevel
  with cfg.unlocked():
    cfg.shared.num_devices = num_devices
  config = config_lib.parse(cfg)
  space, n = config.search_space, config.shared.children_per_batch
  keys = {k: jax.random.fold_in(jax.random.key(0), i)
          for i, k in enumerate(("weights", "data", "aug", "dropout", "val"))}
  ex = experiment.parts_of(space).shared_executor(
      shared.Settings(config.shared, n, config.lm_child), space, dataset, keys)
  ws = ex.place.state(ex.init())
  plan = space.plan(space.num_layers(0))
  tokens, _ = searchers.RandomSearcher().propose(None, jax.random.key(1), plan, space.decisions,
                                                 n)
  archs = [space.decode(plan, t) for t in tokens]
  t0 = time.perf_counter()
  ws, loss = ex.train_step(ws, archs, 0)
  jax.block_until_ready(loss)
  ex.score(ws, archs, 0)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for g in range(1, steps + 1):
    ws, loss = ex.train_step(ws, archs, g)
  jax.block_until_ready((ws, loss))
  train_s = (time.perf_counter() - t0) / steps
  t0 = time.perf_counter()
  for j in range(1, steps + 1):
    ex.score(ws, archs, j)   # numpy out: waits for the device
  score_s = (time.perf_counter() - t0) / steps
  return {"devices": len(ex.devices), "children_per_batch": n, "compile_seconds": compile_s,
          "train_step_ms": 1e3 * train_s, "score_ms": 1e3 * score_s,
          "train_steps_per_second": 1 / train_s, "device_kind": ex.devices[0].device_kind}


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  from nas_jax.training import data  # pylint: disable=import-outside-toplevel
  local = jax.local_device_count()
  n = _N.value or local
  cfg = common.load_experiment(CONFIGS[_SPACE.value])
  with cfg.unlocked():
    cfg.shared.children_per_batch = n
    cfg.search.children_per_step = n
    cfg.shared.batch_size = max(cfg.shared.batch_size // n, 1) * n
  from nas_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  dataset = data.load(config_lib.parse(cfg).data, 0)
  rows = []
  for d in sorted({1, local}):
    if n % d:
      print(f"skipping {d} devices: children_per_batch {n} is not a multiple", file=sys.stderr)
      continue
    rows.append(measure(cfg, dataset, d, _STEPS.value))
    print(f"{d} device(s): {rows[-1]['train_step_ms']:.1f} ms per training step", file=sys.stderr)
  base = rows[0]["train_step_ms"]
  print(f"| devices | architectures per minibatch | training step | steps/s | speed-up | "
        f"scoring {n} architectures | compile |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['devices']} x {r['device_kind']} | {r['children_per_batch']} | "
          f"{r['train_step_ms']:.1f} ms | {r['train_steps_per_second']:.1f} | "
          f"{base / r['train_step_ms']:.2f}x | {r['score_ms']:.1f} ms | "
          f"{r['compile_seconds']:.1f} s |")
  common.write_json(_JSON.value, {"space": _SPACE.value, "steps": _STEPS.value, "rows": rows,
                                  "speedup": base / rows[-1]["train_step_ms"]})


if __name__ == "__main__":
  app.run(main)
