"""The weight-sharing protocol over seeds (``nas_jax/cli/shared_seeds.py``)."""

import json
import os

import pytest

from nas_jax.cli import shared_seeds


def _rec(group, seed, val, test, search=100.0, retrain=10.0, shared=0.5):
  return {"group": group, "seed": seed, "val": val, "test": test, "params": 1000,
          "search_seconds": search, "retrain_seconds": retrain, "shared_score": shared,
          "description": "d", "complete": True}


def test_table_gives_mean_and_t_half_width_per_group():
  recs = [_rec("reinforce", 0, 0.90, 0.80), _rec("reinforce", 1, 0.92, 0.82),
          _rec("reinforce", 2, 0.94, 0.84), _rec("reference:arch", 0, 0.95, 0.95, search=None,
                                                  shared=None)]
  lines = shared_seeds.table("digits", recs).splitlines()
  assert len(lines) == 4
  rf = lines[2].split(" | ")
  assert rf[0] == "| reinforce (0,1,2)"
  # mean 0.92, sd 0.02, t_{0.975,2} = 4.303: half-width 4.303 * 0.02 / sqrt(3) = 0.0497
  assert rf[2] == "0.920 ± 0.050"
  assert rf[3] == "0.820 ± 0.050"
  assert rf[-1].startswith("110 ± 0")  # search + retrain
  ref = lines[3].split(" | ")
  assert ref[0] == "| reference arch (0)"
  assert ref[1] == "-"                   # no shared-weights score
  assert ref[2] == "0.950"               # one run: no interval
  assert ref[-3] == "-" and ref[-1].startswith("10 ")  # no search; total = retrain


def test_derived_best_refuses_a_search_cut_off_before_its_derive(tmp_path):
  (tmp_path / "summary.json").write_text(json.dumps(
      {"best": {"evaluation": "shared", "description": "x", "val_accuracy": 0.5}}))
  with pytest.raises(ValueError, match="derive"):
    shared_seeds.derived_best(str(tmp_path))
  (tmp_path / "summary.json").write_text(json.dumps(
      {"best": {"evaluation": "derive", "description": "x", "val_ppl": 20.5}}))
  assert shared_seeds.derived_best(str(tmp_path)) == {"description": "x", "shared_score": 20.5}


def test_quick_digits_protocol_retrains_the_derived_best_and_resumes_without_rerunning(
    tmp_path, monkeypatch):
  root = str(tmp_path)
  recs = shared_seeds.protocol("digits", root, [0], ["random"],
                               shared_seeds.QUICK_DIGITS_REFERENCE, cache=False, extra=[],
                               quick=True)
  assert [(r["group"], r["seed"]) for r in recs] == [
      ("random", 0), ("reference:" + shared_seeds.QUICK_DIGITS_REFERENCE, 0)]
  searched, ref = recs
  with open(os.path.join(root, "digits_random_s0", "summary.json")) as f:
    best = json.load(f)["best"]
  assert best["evaluation"] == "derive"
  # the retrained child is the derived best, trained from scratch with its own numbers
  assert searched["description"] == best["description"]
  assert searched["shared_score"] == best["val_accuracy"]
  with open(os.path.join(root, "digits_random_s0", "retrain", "metrics.json")) as f:
    child = json.load(f)["children"][0]
  assert (searched["val"], searched["test"]) == (child["val_accuracy"], child["test_accuracy"])
  assert child["description"] == best["description"]
  for acc in (searched["val"], searched["test"]):   # a count of the 250 validation / test digits
    assert 0.0 <= acc <= 1.0 and abs(acc * 250 - round(acc * 250)) < 1e-6
  # each time is the wall time of its process, which holds the time its own files record
  with open(os.path.join(root, "digits_random_s0", "steps.jsonl")) as f:
    steps_seconds = sum(json.loads(line)["seconds"] for line in f)
  assert searched["search_seconds"] >= steps_seconds > 0
  assert searched["retrain_seconds"] >= child["seconds"] > 0
  assert ref["description"] == shared_seeds.QUICK_DIGITS_REFERENCE and ref["search_seconds"] is None
  with open(os.path.join(root, "shared_seeds_digits.json")) as f:
    assert json.load(f)["runs"] == recs

  def no_run(cmd, log_path):
    raise AssertionError(f"reran {cmd}")

  monkeypatch.setattr(shared_seeds.proto, "run_logged", no_run)
  again = shared_seeds.protocol("digits", root, [0], ["random"],
                                shared_seeds.QUICK_DIGITS_REFERENCE, cache=False, extra=[],
                                quick=True)
  assert again == recs
  # the full-size protocol does not read the quick runs back as its own
  with pytest.raises(ValueError, match="quick"):
    shared_seeds.protocol("digits", root, [0], ["random"], shared_seeds.QUICK_DIGITS_REFERENCE,
                          cache=False, extra=[], quick=False)
