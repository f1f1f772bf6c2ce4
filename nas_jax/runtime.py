"""Process-wide settings: faster training on CPU, and a readable search log.

:func:`progress_is_logged` tells ``run_search`` whether its one line per controller step is shown
by logging (the experiment scripts, :func:`show_search_progress`) or must go to stderr (a notebook
or script that set up no logging).

:func:`tune_malloc` keeps the memory that XLA frees in the process's heap for the next step
instead of handing every large buffer back to the operating system. Without it, glibc serves each
multi-megabyte buffer (a language model's 400 x 10,000 logits, say) with a fresh ``mmap`` and
every step pays the page faults of touching that memory again. On the 2-core CPU this made the PTB
language model train 1.24x faster (PyTorch 1.12x; ``python benchmarks/lm_throughput.py`` measures
both settings). The experiment scripts call it unless ``--notune_malloc``; call it yourself at the
top of a notebook or script.

The cost: the process keeps its peak heap size instead of shrinking after a large step.
"""

from __future__ import annotations

import ctypes
import os
import sys

# The experiment scripts' --compilation_cache_dir default; the environment variable moves it (a
# shared or scratch disk, or one cache for a whole test session).
COMPILATION_CACHE_DIR = os.environ.get("NAS_JAX_COMPILATION_CACHE_DIR",
                                       os.path.expanduser("~/.cache/nas_jax/jax_cache"))



def enable_compilation_cache(path: str) -> None:
  """JAX's persistent compilation cache in ``path`` (nothing for ''), for every program that takes
  over 0.2 s to compile: a rerun, a resumed run or another run of the same children reuses them."""
  if not path:
    return
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


_M_TRIM_THRESHOLD = -1   # glibc mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_applied = False


def tune_malloc() -> bool:
  """Serves large allocations from the heap and never trims it (glibc only).

  Returns:
    True if the setting is now in effect (Linux with glibc), False where it does not apply
    (other C libraries, macOS, Windows); it is then a no-op.
  """
  global _applied
  if _applied:
    return True
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # musl and others: no mallopt
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  # No mmap for large blocks (glibc still falls back to mmap if the heap cannot grow), and never
  # give the top of the heap back to the system, so freed buffers are reused without page faults.
  _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
  return _applied


class _DropLibraryInfo:
  """A logging filter: INFO records of orbax (several lines per checkpoint) and JAX's INFO line
  about each accelerator backend it probed and did not find (e.g. "Unable to initialize backend
  'tpu'" on every machine without libtpu) are dropped; warnings and errors all pass."""

  def filter(self, record) -> bool:
    import logging  # pylint: disable=import-outside-toplevel
    if record.levelno >= logging.WARNING:
      return True
    if record.pathname.endswith("xla_bridge.py"):
      return not record.getMessage().startswith("Unable to initialize backend")
    return "/orbax/" not in record.pathname


def log_progress(show: bool, line: str, *args) -> None:
  """Logs a progress line at INFO (absl); also writes it to stderr where ``show`` and nothing
  would show that record (:func:`progress_is_logged`). The searches' progress lines go here."""
  import sys  # pylint: disable=import-outside-toplevel
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  absl_logging.info(line, *args)
  # After the record: absl's first record may itself set up logging (basicConfig).
  if show and not progress_is_logged():
    print(line % args, file=sys.stderr, flush=True)


def progress_is_logged() -> bool:
  """Whether an INFO record of absl's logger reaches a handler someone configured.

  True under ``absl.app`` (its handler is installed and ``--verbosity`` decides), after
  :func:`show_search_progress`, or where the caller's own logging set-up passes INFO from
  ``absl``; False for a plain script or notebook, where the record would be dropped (Python's
  last-resort handler and absl's ``basicConfig`` show warnings only). ``run_search`` then writes
  its progress line to stderr itself.
  """
  import logging  # pylint: disable=import-outside-toplevel
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  if absl_logging.get_absl_handler() in logging.root.handlers:
    return True
  logger = logging.getLogger("absl")
  if not logger.isEnabledFor(logging.INFO):
    return False
  while logger is not None:
    if any(h.level <= logging.INFO for h in logger.handlers):
      return True
    logger = logger.parent if logger.propagate else None
  return False


def show_search_progress(set_verbosity: bool = True) -> None:
  """Shows the search's INFO log (one line per controller step) without orbax's INFO chatter.

  ``run_search`` shows its progress line without this (on stderr, where logging would drop it);
  call it in a notebook or script to have that line and the other INFO records of the search
  through absl logging instead (the experiment scripts do, with ``set_verbosity=False`` so that
  ``--verbosity`` still rules); warnings of every library still show.
  """
  import logging  # pylint: disable=import-outside-toplevel
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  if set_verbosity:
    absl_logging.set_verbosity(absl_logging.INFO)
  for handler in [absl_logging.get_absl_handler(), *logging.getLogger().handlers]:
    if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
      handler.addFilter(_DropLibraryInfo())
  absl = logging.getLogger("absl")
  if not any(isinstance(f, _DropLibraryInfo) for f in absl.filters):
    absl.addFilter(_DropLibraryInfo())
