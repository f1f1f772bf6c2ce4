"""Shared pytest set-up for nas_jax's tests.

Two tiers (the ``slow`` marker is registered in setup.cfg):

  python -m pytest -q -n 2 tests             # everything, in 2 workers: CI and .ci/run
  python -m pytest -q -m "not slow" tests    # day-to-day: no SIGKILLs of real runs, no extra
                                             # processes, notebooks or real Penn Treebank

A test is marked slow when it kills or starts processes (the command line under SIGKILL, several
``jax.distributed`` processes, virtual-device subprocesses, notebook kernels), reads the real Penn
Treebank, or takes more than ~5 s on a quiet 2-core CPU because it runs a search, trains children
to convergence or compiles many programs (hand-checkable unit tests stay in the fast tier).
"""

import atexit
import os
import shutil
import sys
import tempfile

# toy_space and test_search's helpers are imported by other test files: keep tests/ importable
# whatever pytest's --import-mode.
_TESTS = os.path.dirname(os.path.abspath(__file__))
if _TESTS not in sys.path:
  sys.path.insert(0, _TESTS)

# One JAX compilation cache for every search, training or notebook process the tests start
# (``nas_jax.runtime.COMPILATION_CACHE_DIR``): the controller and the quick children compile once
# per session instead of once per process, and nothing is written to the user's own cache.
if "NAS_JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="nas_jax_test_cache_")
  os.environ["NAS_JAX_COMPILATION_CACHE_DIR"] = _CACHE
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
