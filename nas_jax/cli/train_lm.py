"""Trains a recurrent language model on Penn Treebank with a chosen cell.

  python experiments/train_lm.py --config experiments/configs/lm_ptb_small.py --workdir /tmp/lm_small

``--config.cell`` is ``lstm``, ``nascell``, or the path of a cell search's ``summary.json``
(its best cell is retrained, like the paper's final training of a found cell). Writes
``metrics.json`` (per-epoch perplexities, tokens/s, test perplexity) in the workdir.
"""

import json
import os
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
  runtime.enable_compilation_cache(_CACHE.value)
  import jax  # pylint: disable=g-import-not-at-top
  from nas_jax.training import lm, lm_cells, ptb  # pylint: disable=g-import-not-at-top
  cfg = _CONFIG.value
  try:
    lm_cfg = lm.LMConfig(**cfg.lm.to_dict())
    cell, ops, cell_desc = lm_cells.from_name(cfg.cell, cfg.lm.init_scale)
    corpus = ptb.load_ptb(cfg.data.level, cfg.data.data_dir or None)
  except (ValueError, TypeError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  os.makedirs(_WORKDIR.value, exist_ok=True)
  logging.info("cell %s | %s | vocab %d | train tokens %d", cfg.cell, cell_desc, len(corpus.vocab),
               len(corpus.train))
  result = lm.train(corpus, cell, lm_cfg, jax.random.key(cfg.seed), ops=ops, log_fn=logging.info)
  n_params = sum(p.size for p in jax.tree.leaves(result.params))
  metrics = {"cell": cfg.cell, "cell_description": cell_desc, "params": int(n_params),
             "epochs": result.history, "best_valid_ppl": result.valid_ppl,
             "test_ppl": result.test_ppl, "config": cfg.to_dict(),
             "train_seconds": sum(h["seconds"] for h in result.history),
             "tokens_per_sec": sum(h["tokens_per_sec"] for h in result.history) / len(result.history)}
  with open(os.path.join(_WORKDIR.value, "metrics.json"), "w") as f:
    json.dump(metrics, f, indent=1)
  logging.info("valid ppl (best) %.2f | test ppl %.2f | params %d | %.0f tokens/s",
               result.valid_ppl, result.test_ppl, n_params, metrics["tokens_per_sec"])


def run():
  cli.show_help(__name__, __doc__)
  sys.argv = cli.resolve_config_names(sys.argv)
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
