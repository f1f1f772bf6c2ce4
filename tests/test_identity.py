"""The restructured package computes what the code before it computed: the quick searches' history
and steps rows (minus wall seconds) equal the ones recorded before the restructuring.

The files under tests/data were written by the code of c08a6d2 (before the experiment assembly,
the search skeleton and the optimiser module) on the 2-core x86-64 CPU this project tests on, with
jax/jaxlib 0.10.2, by running each config's ``:quick`` form at seed 0 and dropping every field that
ends in ``seconds``. The values are XLA:CPU's floats: another CPU or XLA version may round
differently, so there the comparison is exact for everything but floats (tokens, architectures,
counts, failures) and floats agree to 1e-4 relative; on the platform that wrote them it is exact.
Regenerate them only for a change that is meant to change what a search computes, and say so.
"""

import json
import os
import platform

import jax
import pytest

from nas_jax import experiment
from nas_jax.configs import cnn_digits, cnn_digits_shared, rnn_ptb_cpu, rnn_ptb_shared_cpu

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
RECORDED_ON = ("0.10.2", "x86_64")   # jax version, machine of the recorded files
EXACT = (jax.__version__, platform.machine()) == RECORDED_ON


def _rows(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _without_seconds(rows):
  return [json.loads(json.dumps({k: v for k, v in r.items() if not k.endswith("seconds")},
                                sort_keys=True)) for r in rows]


def _close(a, b):
  if isinstance(a, float) or isinstance(b, float):
    return a == pytest.approx(b, rel=1e-4, abs=1e-7)
  if isinstance(a, dict):
    return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
  if isinstance(a, list):
    return isinstance(b, list) and len(a) == len(b) and all(map(_close, a, b))
  return a == b


@pytest.mark.slow
@pytest.mark.parametrize("name, module", [
    ("cnn_digits", cnn_digits), ("cnn_digits_shared", cnn_digits_shared),
    ("rnn_ptb_cpu", rnn_ptb_cpu), ("rnn_ptb_shared_cpu", rnn_ptb_shared_cpu)])
def test_quick_searches_write_the_rows_recorded_before_the_restructuring(tmp_path, name, module):
  experiment.run_search(module.get_config("quick"), str(tmp_path), progress=False)
  for kind in ("history", "steps"):
    got = _without_seconds(_rows(tmp_path / f"{kind}.jsonl"))
    want = _rows(os.path.join(DATA, f"{kind}_{name}_quick.jsonl"))
    assert len(got) == len(want) > 0
    if EXACT:
      assert got == want, f"{name} {kind}.jsonl differs from the recorded rows"
    else:
      assert _close(got, want), f"{name} {kind}.jsonl differs from the recorded rows"


def test_the_comparison_catches_a_changed_reward():
  want = _rows(os.path.join(DATA, "history_cnn_digits_quick.jsonl"))
  changed = json.loads(json.dumps(want))
  changed[1]["reward"] *= 1.01
  assert _close(want, want) and not _close(changed, want) and changed != want
