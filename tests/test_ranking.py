"""Ranking quality: the statistics by hand, and the digits measurement at its tiny size."""

import json
import os
import subprocess
import sys

import pytest

from nas_jax.tools import ranking

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_kendall_and_spearman_by_hand():
  x, y = [1, 2, 3, 4], [1, 3, 2, 4]
  # pairs: 5 ordered alike, 1 apart -> tau (5 - 1) / 6; rank differences 0, -1, 1, 0 -> rho
  # 1 - 6 * 2 / (4 * 15)
  assert ranking.kendall_tau(x, y) == pytest.approx(4 / 6)
  assert ranking.spearman_rho(x, y) == pytest.approx(0.8)
  assert ranking.kendall_tau(x, x[::-1]) == pytest.approx(-1.0)
  same = ranking.bootstrap(x, [2 * v for v in x], ranking.kendall_tau)
  assert same == {"value": pytest.approx(1.0), "lo": 1.0, "hi": 1.0, "n": 4}
  c = ranking.correlations(list(range(30)), [v + (7 if v % 5 == 0 else 0) for v in range(30)])
  tau = c["kendall_tau"]
  assert tau["lo"] <= tau["value"] <= tau["hi"] <= 1.0 and tau["value"] < 1.0


@pytest.mark.slow
def test_the_quick_measurement_writes_its_table_json_and_plot(tmp_path):
  out = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "ranking.py"),
                        f"--root={tmp_path}", "--n=6", "--seeds=0,1", "--quick"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "| shared weights vs stand-alone (mean of seeds) |" in out.stdout
  result = json.load(open(tmp_path / "ranking.json"))
  assert len(result["shared"]) == 6 and set(result["alone"]) == {"0", "1"}
  assert all(0.0 <= v <= 1.0 for v in result["shared"] + result["alone"]["0"])
  tau = result["shared_vs_alone"]["kendall_tau"]
  assert tau["value"] == pytest.approx(ranking.kendall_tau(
      result["shared"], [(a + b) / 2 for a, b in zip(result["alone"]["0"], result["alone"]["1"])]))
  assert open(tmp_path / "ranking.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_architectures_are_trained_alone_at_the_exact_searchs_child_budget():
  from nas_jax import config as config_lib, configs  # pylint: disable=import-outside-toplevel
  for space in ("ptb", "enas"):
    shared = config_lib.parse(configs.get_config(ranking.SPACES[space][0]))
    alone = ranking.standalone_config(space)
    assert shared.lm_child.lm.max_train_tokens == 0          # the shared weights: all the text
    assert alone.lm_child.lm.max_train_tokens == 80_000      # a child of the exact search
    assert type(alone.search_space) is type(shared.search_space)
  digits = ranking.standalone_config("digits")
  assert digits.child == config_lib.parse(configs.get_config("cnn_digits")).child
