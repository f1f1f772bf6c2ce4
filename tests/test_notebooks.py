"""The notebooks in colabs/: committed without outputs, and each runs end to end at tiny sizes.

A notebook runs in a fresh kernel (this interpreter) with its working directory and workdirs under
``tmp_path``; a cell inserted after its ``parameters`` cell shrinks the sizes (2 controller steps x
3 children, 2 in each of analyze_search's two searches; 1 epoch; 256 training images). No JAX persistent compilation cache is configured, and
IPython's history and the kernel's connection file go under ``tmp_path`` too.
"""

import json
import os
import re
import sys

import pytest

nbformat = pytest.importorskip("nbformat")  # nbformat, nbclient, ipykernel: the `test` extra
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(ROOT, "colabs")
NOTEBOOKS = ("quickstart.ipynb", "custom_search_space.ipynb", "analyze_search.ipynb")
TINY = {"NUM_STEPS": 2, "CHILDREN_PER_STEP": 3, "EPOCHS": 1, "MAX_TRAIN": 256}
CELL_TIMEOUT_S = 300


def read(name):
  return nbformat.read(os.path.join(COLABS, name), as_version=4)


def parameters_cell(nb) -> int:
  found = [i for i, c in enumerate(nb.cells)
           if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
  assert len(found) == 1, "exactly one code cell must be tagged 'parameters'"
  return found[0]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs(name):
  nb = read(name)
  nbformat.validate(nb)
  assert nb.nbformat == 4
  code = [c for c in nb.cells if c.cell_type == "code"]
  for c in code:
    assert c.outputs == [] and c.execution_count is None, (
        f"{name}: strip the outputs before committing (cell starting {c.source[:40]!r})")
  assert nb.cells.index(code[0]) == parameters_cell(nb), "the first code cell holds the parameters"


def _install_cell(nb) -> str:
  cells = [c.source for c in nb.cells if c.cell_type == "code" and "NAS_JAX_SOURCE" in c.source]
  assert len(cells) == 1, "one install cell"
  return cells[0]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_install_cell_installs_an_uploaded_wheel_or_the_given_source(name, tmp_path,
                                                                         monkeypatch):
  """The install cell as a runtime without nas_jax runs it (pip recorded, not run)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  source = _install_cell(read(name))
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda n, *a: None if n == "nas_jax" else find_spec(n, *a))
  calls = []
  monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
  monkeypatch.chdir(tmp_path)

  def run(**overrides):
    calls.clear()
    code = source
    for k, v in overrides.items():
      code = code.replace(f'{k} = ""', f"{k} = {v!r}")
    exec(compile(code, name, "exec"), {"print": lambda *a: None})  # pylint: disable=exec-used
    return [c[c.index("install") + 1:] for c in calls]

  with pytest.raises(ImportError, match=r"upload a wheel \(python -m pip wheel --no-deps -w "
                     r"dist \. in a clone\) or set NAS_JAX_SOURCE"):
    run()
  (tmp_path / "nas_jax-0.1.0-py3-none-any.whl").write_bytes(b"")
  assert run() == [["-q", "nas_jax-0.1.0-py3-none-any.whl"]]
  assert run(NAS_JAX_SOURCE="git+https://example.org/nas_jax") == [
      ["-q", "git+https://example.org/nas_jax"]]


@pytest.fixture
def kernel(tmp_path_factory, monkeypatch):
  """A kernel spec that runs this interpreter (the one with nas_jax), found before any other."""
  jupyter_dir = tmp_path_factory.mktemp("jupyter")
  spec_dir = jupyter_dir / "kernels" / "nas_jax_test"
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "nas_jax tests", "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(jupyter_dir))
  monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(jupyter_dir / "runtime"))
  monkeypatch.setenv("IPYTHONDIR", str(jupyter_dir / "ipython"))
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)  # no persistent cache writes
  monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # debugpy's warning on stderr
  monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows figures
  return "nas_jax_test"


def execute(name, overrides, cwd, kernel_name):
  """Runs notebook ``name`` in ``cwd`` with ``overrides`` assigned after its parameters cell."""
  nb = read(name)
  i = parameters_cell(nb)
  for key in overrides:  # a renamed parameter would silently leave the notebook at full size
    assert re.search(rf"^{key} = ", nb.cells[i].source, re.M), f"{name} has no parameter {key}"
  nb.cells.insert(i + 1, nbformat.v4.new_code_cell(
      "\n".join(f"{k} = {v!r}" for k, v in overrides.items())))
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=kernel_name,
                                   resources={"metadata": {"path": str(cwd)}})
  client.execute()  # raises CellExecutionError (with the cell's traceback) if a cell fails
  return nb


def text_of(nb) -> str:
  parts = []
  for c in nb.cells:
    for o in c.get("outputs", []):
      parts.append(o.get("text", ""))
      for mime in ("text/plain", "text/markdown"):
        parts.append(o.get("data", {}).get(mime, ""))
  return "\n".join(parts)


def num_images(nb) -> int:
  return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def summary_of(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


@pytest.mark.slow
def test_quickstart_runs(tmp_path, kernel):
  workdir = tmp_path / "quickstart"
  nb = execute("quickstart.ipynb", {**TINY, "START_LAYERS": 2, "WORKDIR": str(workdir)}, tmp_path,
               kernel)
  summary = summary_of(workdir)
  assert summary["num_evaluated"] == 6
  best = summary["best"]
  assert len(best["arch"]["layers"]) == 2
  out = text_of(nb)
  assert f"best architecture: {best['description']}" in out
  assert f"6 architectures, best reward {best['reward']:.4f}" in out
  assert num_images(nb) >= 2  # the rewards, the best architecture's diagram


@pytest.mark.slow
def test_custom_search_space_runs(tmp_path, kernel):
  workdir = tmp_path / "mlp"
  nb = execute("custom_search_space.ipynb", {**TINY, "WORKDIR": str(workdir)}, tmp_path, kernel)
  summary = summary_of(workdir)
  assert summary["num_evaluated"] == 6
  assert summary["search_space"]["name"] == "mlp"  # the notebook's own space was searched
  best = summary["best"]
  assert set(best["arch"]) == {"widths", "activations"} and not best["failed"]
  assert f"best MLP: {best['description']}" in text_of(nb)
  assert num_images(nb) >= 1


@pytest.mark.slow
def test_analyze_search_runs_its_demo_searches(tmp_path, kernel):
  demo = tmp_path / "demo"
  nb = execute("analyze_search.ipynb", {**TINY, "CHILDREN_PER_STEP": 2, "START_LAYERS": 2,
                                        "DEMO_DIR": str(demo)}, tmp_path, kernel)
  for searcher in ("reinforce", "random"):
    assert summary_of(demo / searcher)["num_evaluated"] == 4
  best = summary_of(demo / "reinforce")["best"]
  out = text_of(nb)
  assert f"best architecture: {best['description']}" in out
  assert f"`{best['description']}`" in out  # the table of top architectures
  assert "| reinforce |" in out and "| random |" in out  # the comparison table names both runs
  assert num_images(nb) >= 3  # top-k curves, rewards, the best architecture's diagram
