"""nas-jax seeds: the exact search over searchers x seeds, retrained on test, compared."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from nas_jax.tools import seeds_protocol as seeds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_welch_by_hand():
  a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0]
  va, vb = 1.0, 20 / 3   # sample variances
  se2 = va / 3 + vb / 4
  t = (2.0 - 5.0) / math.sqrt(se2)
  df = se2 ** 2 / ((va / 3) ** 2 / 2 + (vb / 4) ** 2 / 3)
  r = seeds.welch(a, b)
  assert r["t"] == pytest.approx(t) and r["df"] == pytest.approx(df) and 0.05 < r["p"] < 0.2
  assert seeds.welch([1.0], b) == {"t": None, "df": None, "p": None}   # one run: no test


def _cmd(root, *extra):
  return [sys.executable, os.path.join(ROOT, "experiments", "seeds.py"), "--space", "ptb",
          "--root", str(root), "--seeds", "0,1", "--arms", "reinforce,random", "--quick", *extra]


@pytest.mark.slow
def test_quick_protocol_is_killed_and_resumes_to_the_same_table(tmp_path):
  # killed while the second search runs; the rerun keeps the finished search and retrain
  proc = subprocess.Popen(_cmd(tmp_path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True)
  deadline = time.time() + 300
  while not os.path.exists(tmp_path / "ptb_random_s0" / "search.log"):
    assert time.time() < deadline and proc.poll() is None
    time.sleep(0.2)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  first = tmp_path / "ptb_reinforce_s0" / "retrain" / "metrics.json"
  stamp = os.path.getmtime(first)
  out = subprocess.run(_cmd(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert os.path.getmtime(first) == stamp   # not retrained again
  assert "[ptb] search reinforce seed 0" not in out.stdout
  result = json.load(open(tmp_path / "seeds_ptb.json"))
  groups = result["comparison"]["groups"]
  assert set(groups) == {"REINFORCE", "random search"}
  assert all(len(g["runs"]) == 2 for g in groups.values())
  for arm in ("reinforce", "random"):
    st = result["retrained"][arm]
    assert [r["seed"] for r in st["runs"]] == [0, 1]
    assert all(1.0 < r["test"] < 60.0 for r in st["runs"])   # a character LM: ppl above 1
    assert st["test"]["n"] == 2 and st["test"]["lo"] is not None
  assert set(result["tests"]["reinforce"]) == {"top5_unique", "retrained_test"}
  assert "retrained test ppl" in out.stdout and "Welch's t-test, REINFORCE vs random" in out.stdout
  assert open(tmp_path / "fig6_ptb.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  again = subprocess.run(_cmd(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and "[ptb] search" not in again.stdout
  assert json.load(open(tmp_path / "seeds_ptb.json")) == result
