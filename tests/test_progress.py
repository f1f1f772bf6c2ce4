"""What a Python caller of the library meets first: run_search shows one progress line per
controller step on stderr, unless logging already shows it (the CLI, show_search_progress) or it
passes ``progress=False``; and importing the search or the data leaves TFDS (and TensorFlow,
pyarrow) unimported until CIFAR-10 is read through TFDS."""

import logging
import os
import subprocess
import sys

import pytest

from nas_jax import runtime
from nas_jax import experiment

from test_search import _NO_DATA, FakeEvaluator, fake_config
from toy_space import MLPSpace

TESTS = os.path.dirname(os.path.abspath(__file__))
STEPS = 3


def _search(workdir, **kwargs):
  return experiment.run_search(fake_config(steps=STEPS), str(workdir), space=MLPSpace(),
                           dataset=_NO_DATA, evaluate_fn=FakeEvaluator(), **kwargs)


def _progress_lines(text):
  return [l for l in text.splitlines() if l.startswith("step ") and "children/min" in l]


def test_without_logging_one_line_per_step_on_stderr_and_none_when_off(tmp_path, capsys,
                                                                        monkeypatch):
  monkeypatch.setattr(logging.getLogger("absl"), "level", logging.WARNING)  # as in a fresh process
  assert not runtime.progress_is_logged()
  _search(tmp_path / "on")
  err = capsys.readouterr().err
  lines = _progress_lines(err)
  assert [l.split(" | ")[0] for l in lines] == [f"step {s} ({s + 1} of {STEPS})"
                                               for s in range(STEPS)]
  # before step 0 trains: a header that says what runs where
  header = err.splitlines()[0]
  assert header.startswith("search | space MLPSpace | searcher reinforce | 3 steps x 4 children")
  assert f"workdir {tmp_path / 'on'}" in header and "device(s)" in header
  _search(tmp_path / "off", progress=False)
  assert _progress_lines(capsys.readouterr().err) == []


def test_progress_is_not_doubled_where_logging_shows_it(tmp_path, capsys, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  assert runtime.progress_is_logged()
  _search(tmp_path)
  assert _progress_lines(capsys.readouterr().err) == []
  assert len(_progress_lines("\n".join(r.getMessage() for r in caplog.records))) == STEPS


_SCRIPT = f"""
import sys
sys.path.insert(0, {TESTS!r})
from test_search import _NO_DATA, FakeEvaluator, fake_config
from toy_space import MLPSpace
from nas_jax import experiment
for name, kwargs in (("on", {{}}), ("off", {{"progress": False}})):
  print("--- " + name, file=sys.stderr, flush=True)
  experiment.run_search(fake_config(steps={STEPS}), sys.argv[1] + "/" + name, space=MLPSpace(),
                    dataset=_NO_DATA, evaluate_fn=FakeEvaluator(), **kwargs)
"""


@pytest.mark.slow  # a fresh Python process (JAX import, controller compile)
def test_a_fresh_python_process_prints_progress_by_default(tmp_path):
  res = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path)], capture_output=True,
                       text=True, timeout=300)
  assert res.returncode == 0, res.stderr
  on, off = res.stderr.split("--- off")
  assert len(_progress_lines(on)) == STEPS, res.stderr
  assert _progress_lines(off) == [] and not res.stdout


def test_importing_the_search_and_the_data_does_not_import_tfds():
  heavy = ("tensorflow_datasets", "tensorflow", "pyarrow")
  code = ("import sys; import nas_jax, nas_jax.core.search, nas_jax.training.data; "
          f"print([m for m in {heavy!r} if m in sys.modules])")
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr
  assert res.stdout.strip() == "[]", res.stdout
