"""Trains a recurrent language model on Penn Treebank with a chosen cell.

  python experiments/train_lm.py --config experiments/configs/lm_ptb_small.py --workdir /tmp/lm_small

``--config.cell`` is ``lstm``, ``nascell``, or the path of a cell search's ``summary.json``
(its best cell is retrained, like the paper's final training of a found cell). Writes
``metrics.json`` (per-epoch perplexities, tokens/s, test perplexity) in the workdir, a
checkpoint after every epoch: rerunning the same command after a kill (or Ctrl-C, exit 130)
continues and ends with the numbers of an uninterrupted run (``nas_jax/core/lm_run.py``).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from nas_jax import cli, runtime

_CONFIG = config_flags.DEFINE_config_file("config", None, "LM config: " + cli.CONFIG_HELP,
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
_CACHE = flags.DEFINE_string(
    "compilation_cache_dir", runtime.COMPILATION_CACHE_DIR,
    "JAX persistent compilation cache; '' disables. Default: $NAS_JAX_COMPILATION_CACHE_DIR, else "
    "~/.cache/nas_jax/jax_cache.")
_TUNE_MALLOC = flags.DEFINE_bool(
    "tune_malloc", True, "Keep freed memory in the heap (glibc) so that large buffers are reused "
    "without page faults; faster CPU training (nas_jax.runtime.tune_malloc).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _TUNE_MALLOC.value:
    runtime.tune_malloc()
  runtime.show_search_progress(set_verbosity=False)  # none of orbax's INFO lines
  runtime.enable_compilation_cache(_CACHE.value)
  from nas_jax import errors  # pylint: disable=g-import-not-at-top
  from nas_jax.core import lm_run  # pylint: disable=g-import-not-at-top
  try:
    metrics = lm_run.run(_CONFIG.value, _WORKDIR.value, log_fn=logging.info)
  except KeyboardInterrupt:
    cli.exit_interrupted()
  except (errors.WorkdirError, errors.DataUnavailableError, ValueError, TypeError,
          FileNotFoundError) as e:
    cli.fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  except OSError as e:  # outside the workdir (the data, the compilation cache, ...)
    cli.fail(f"{e.filename or _WORKDIR.value}: {e.strerror or e}")
  logging.info("valid ppl (best) %.2f | test ppl %.2f | params %d | %.0f tokens/s",
               metrics["best_valid_ppl"], metrics["test_ppl"], metrics["params"],
               metrics["tokens_per_sec"])


def run():
  cli.show_help(__name__, __doc__)
  sys.argv = cli.resolve_config_names(sys.argv)
  cli.run_app(main)


if __name__ == "__main__":
  run()
