"""Runs (or resumes) an architecture search.

  python experiments/search.py --config experiments/configs/cnn_digits.py --workdir /tmp/nas

Override any field from the command line, e.g. ``--config.search.searcher=random`` or
``--config.child.epochs=10``; use ``--config=experiments/configs/cnn_digits.py:quick`` for a CPU-sized
run. Rerunning the same command resumes from the last checkpoint in the workdir.

With ``--distributed`` or ``--coordinator_address`` the search runs in a child process of this one
(``nas_jax/core/supervisor.py``), so that a lost peer process ends in one line and exit code 3.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from nas_jax import cli, runtime
from nas_jax.core import supervisor  # the standard library only, as nas_jax and nas_jax.core

_CONFIG = config_flags.DEFINE_config_file("config", None, cli.CONFIG_HELP, lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (history, checkpoints).")
_CACHE = flags.DEFINE_string(
    "compilation_cache_dir", runtime.COMPILATION_CACHE_DIR,
    "JAX persistent compilation cache (compiled children are reused across runs); '' disables. "
    "Default: $NAS_JAX_COMPILATION_CACHE_DIR, else ~/.cache/nas_jax/jax_cache.")
_TUNE_MALLOC = flags.DEFINE_bool(
    "tune_malloc", True, "Keep freed memory in the heap (glibc) so that large buffers are reused "
    "without page faults; faster CPU training (nas_jax.runtime.tune_malloc).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "One search over several processes/hosts (jax.distributed); implied by "
    "--coordinator_address. Without the three flags below JAX detects the cluster (TPU pods, "
    "Slurm).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0's coordination service.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_s", 100, "A process silent this long counts as dead; the others then stop.")
_SUPERVISE = flags.DEFINE_bool(
    "supervise", True, "With --distributed or --coordinator_address: run the search in a child "
    "process, so that a lost peer (JAX then aborts the process) ends in one line and exit code 3.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _TUNE_MALLOC.value:
    runtime.tune_malloc()
  runtime.show_search_progress(set_verbosity=False)  # none of orbax's INFO lines
  runtime.enable_compilation_cache(_CACHE.value)
  import jax  # pylint: disable=g-import-not-at-top
  from nas_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from nas_jax.training import data
  from nas_jax import errors, experiment
  from nas_jax.core import distributed
  if _DISTRIBUTED.value or _COORDINATOR.value:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           heartbeat_timeout_s=_HEARTBEAT.value)
    logging.info("process %d of %d, %d local devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count())
  try:
    result = experiment.run_search(_CONFIG.value, _WORKDIR.value)
  except KeyboardInterrupt:
    cli.exit_interrupted()
  except (config_lib.ConfigError, errors.WorkdirError, errors.ChildrenFailError,
          data.DataUnavailableError, FileNotFoundError, distributed.DistributedError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except OSError as e:  # outside the workdir (the data, the compilation cache, ...)
    print(f"error: {e.filename or _WORKDIR.value}: {e.strerror or e}", file=sys.stderr)
    sys.exit(2)
  best, metric = result.best, result.metric.name
  if best:
    logging.info("best of %d architectures: reward %.4g %s %.4f params %d | %s",
                 result.num_evaluated, best["reward"], metric, best.get(metric) or float("nan"),
                 best["param_count"], best["description"])


def run():
  """The command line: ``nas-jax search ...`` or ``python experiments/search.py ...``."""
  cli.show_help(__name__, __doc__)
  if "--nosupervise" not in sys.argv and supervisor.wanted(sys.argv):
    sys.exit(supervisor.supervise([sys.executable, *sys.orig_argv[1:], "--nosupervise"]))
  sys.argv = cli.resolve_config_names(sys.argv)
  cli.run_app(main)


if __name__ == "__main__":
  run()
