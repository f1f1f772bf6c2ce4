"""The measurement processes' protocol of ``child_throughput.py``, and its memory probes.

Every measurement is a fresh process of the script (``--worker=NAME`` and the flags in
``WORKER_FLAGS``); it prints one line ``RESULT {json}`` (:func:`emit`), which :func:`spawn` reads
back. The ``analysis`` process leaves in ``--setup_dir`` the data and architectures that every
measurement process trains (:func:`save_setup`, :func:`load_setup`: ``data.npz`` and
``setup.json``, NumPy and JSON only). Memory: :func:`maxrss_mb` (this process's peak) and
:func:`main_job_memory` (the main job's search process, ``--main_job_memory``).

Imports neither JAX nor nas_jax: the PyTorch peer's process uses it too.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import common

RESULT_PREFIX = "RESULT "
# The flags that a measurement process is given (in this order) and reads, as a dict.
WORKER_FLAGS = ("workload", "children", "m", "archs", "naive_children", "seed", "epochs",
                "max_train", "torch_device", "controller", "matmul_size", "setup_dir",
                "executors", "space", "rerun", "exact_workers", "fast_compile")


def worker_flags(flag_values) -> dict:
  """The ``WORKER_FLAGS`` of ``flag_values`` (absl's FLAGS) as a dict."""
  return {k: flag_values[k].value for k in WORKER_FLAGS}


def spawn(script: str, name: str, f: dict, tune_malloc: bool, extra: tuple = ()) -> dict:
  """Runs ``script --worker=name`` with the flags ``f`` in a fresh process; its results, or
  {"error": ...}."""
  cmd = [sys.executable, script, f"--worker={name}",
         "--tune_malloc" if tune_malloc else "--notune_malloc", *extra]
  cmd += [f"--{k}={','.join(v) if isinstance(v, list) else v}" for k, v in f.items()
          if k != "torch_device"]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith(RESULT_PREFIX):
      return json.loads(line[len(RESULT_PREFIX):])
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
  return {"error": f"exit code {proc.returncode}: " + " | ".join(tail)}


def emit(res: dict) -> None:
  """A measurement process's results, for :func:`spawn`."""
  print(RESULT_PREFIX + json.dumps(res))


def save_setup(setup_dir: str, dataset, train_config: dict, archs_a: list,
               archs_b: list) -> None:
  """Leaves the data (``dataset``'s train and validation arrays) and the architectures (JSON
  forms) of every measurement process in ``setup_dir``."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  np.savez(os.path.join(setup_dir, "data.npz"), **{
      k: getattr(dataset, k) for k in ("train_images", "train_labels", "val_images",
                                       "val_labels")})
  with open(os.path.join(setup_dir, "setup.json"), "w") as fh:
    json.dump({"name": dataset.name, "num_classes": dataset.num_classes,
               "augment": bool(dataset.augment), "train_config": train_config,
               "archs_a": archs_a, "archs_b": archs_b}, fh)


def load_setup(setup_dir: str):
  """(setup.json as a dict, the data arrays) that the analysis process left; numpy only."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  with open(os.path.join(setup_dir, "setup.json")) as fh:
    spec = json.load(fh)
  with np.load(os.path.join(setup_dir, "data.npz")) as z:
    arrays = {k: z[k] for k in z.files}
  return spec, arrays


def maxrss_mb() -> float:
  """This process's peak resident memory."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def main_job_memory(config: str, steps: int, json_path: str) -> None:
  """Peak RSS of the main job's search process (os.wait4: the process and its waited children)."""
  workdir = tempfile.mkdtemp(prefix="nas_jax_main_job_")
  cache = tempfile.mkdtemp(prefix="nas_jax_main_job_cache_")
  cmd = [sys.executable, os.path.join(common.ROOT, "experiments", "search.py"),
         f"--config={config}", f"--workdir={workdir}",
         f"--config.search.num_steps={steps}", f"--compilation_cache_dir={cache}"]
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          cwd=common.ROOT)
  err = proc.stderr.read()
  _, status, usage = os.wait4(proc.pid, 0)
  proc.returncode = os.waitstatus_to_exitcode(status)
  wall = time.perf_counter() - t0
  if proc.returncode != 0:
    raise SystemExit(f"search failed (exit code {proc.returncode}): {err[-2000:]}")
  children = 0
  hist = os.path.join(workdir, "history.jsonl")
  if os.path.exists(hist):
    with open(hist) as fh:
      children = sum(1 for line in fh if line.strip())
  out = {"command": " ".join(["python", "experiments/search.py"] + cmd[2:3] +
                             [f"--config.search.num_steps={steps}"]),
         "controller_steps": steps, "children": children, "seconds": wall,
         "peak_rss_mb": usage.ru_maxrss / 1024.0}
  print(f"main job ({out['command']}): {children} children in {wall:.0f} s, peak resident "
        f"memory {out['peak_rss_mb']:.0f} MB")
  common.write_json(json_path or "benchmarks/results/main_job_memory.json", out)
