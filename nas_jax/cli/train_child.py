"""Retrains a search's best CNN (or the K best, or one given by hand) from scratch; test accuracy.

  python experiments/train_child.py --search_workdir /tmp/nas_digits \
      --config experiments/configs/cnn_digits_final.py          # -> /tmp/nas_digits/retrain
  python experiments/train_child.py --search_workdir /tmp/nas_digits --top_k 5 \
      --config experiments/configs/cnn_digits_final.py
  python experiments/train_child.py --arch '0:7x7x32<img 1:7x3x24<0' --workdir /tmp/final \
      --config experiments/configs/cnn_digits_final.py

``--arch`` is the JSON of an architecture as history rows store it (their ``arch``), a JSON list
of tokens, or the one-line description of the logs and the history (``0:7x7x32<img 1:7x3x24<0``:
layer ``FHxFWxN``, inputs ``img`` or ``0,1``). Its space is the ``--search_workdir``'s, or without
one the config's ``search_space``. Writes ``metrics.json`` (validation and test accuracy,
parameters, FLOPs per image) in the output directory (``nas_jax/core/retrain.py`` lists its
files); rerunning the same command resumes from the last finished epoch.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from nas_jax import cli, runtime

_CONFIG = config_flags.DEFINE_config_file("config", None,
                                          "Final-training config: " + cli.CONFIG_HELP,
                                          lock_config=True)
_SEARCH = flags.DEFINE_string("search_workdir", None,
                              "A CNN search's workdir: its best architectures are retrained.")
_ARCH = flags.DEFINE_string("arch", None, "An architecture to retrain (JSON, tokens or the "
                            "description '0:3x3x16<img 1:5x5x32<0'), instead of the search's.")
_TOP_K = flags.DEFINE_integer("top_k", 1, "Retrain the K best unique architectures of the search.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default: "
                               "SEARCH_WORKDIR/retrain; required with --arch alone).")
_CACHE = flags.DEFINE_string(
    "compilation_cache_dir", runtime.COMPILATION_CACHE_DIR,
    "JAX persistent compilation cache; '' disables. Default: $NAS_JAX_COMPILATION_CACHE_DIR, "
    "else ~/.cache/nas_jax/jax_cache.")
_TUNE_MALLOC = flags.DEFINE_bool(
    "tune_malloc", True, "Keep freed memory in the heap (glibc): faster CPU training "
    "(nas_jax.runtime.tune_malloc).")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _TUNE_MALLOC.value:
    runtime.tune_malloc()
  runtime.show_search_progress(set_verbosity=False)  # none of orbax's INFO lines
  runtime.enable_compilation_cache(_CACHE.value)
  from nas_jax import errors, experiment  # pylint: disable=g-import-not-at-top
  try:
    metrics = experiment.retrain(_CONFIG.value, _WORKDIR.value, search_workdir=_SEARCH.value,
                                 arch=_ARCH.value, top_k=_TOP_K.value, log_fn=logging.info)
  except KeyboardInterrupt:
    cli.exit_interrupted()
  except (errors.InputError, errors.ConfigError, errors.DataUnavailableError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except FloatingPointError as e:
    print(f"error: {e}; lower --config.child.learning_rate", file=sys.stderr)
    sys.exit(1)
  except OSError as e:
    print(f"error: {e.filename or _WORKDIR.value or _SEARCH.value}: {e.strerror or e}",
          file=sys.stderr)
    sys.exit(2)
  for c in metrics["children"]:
    logging.info("rank %d: val_acc %.4f test_acc %.4f params %d flops/image %d | %s", c["rank"],
                 c["val_accuracy"], c["test_accuracy"], c["param_count"], c["flops"],
                 c["description"])


def run():
  cli.show_help(__name__, __doc__)
  sys.argv = cli.resolve_config_names(sys.argv)
  cli.run_app(main)


if __name__ == "__main__":
  run()
