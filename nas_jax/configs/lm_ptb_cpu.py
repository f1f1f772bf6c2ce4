"""The child of the CPU cell search (``rnn_ptb_cpu.py``) as a language model of its own: the
retrain of a found cell at the search's child budget.

  python experiments/train_lm.py --config experiments/configs/lm_ptb_cpu.py --workdir /tmp/lm_cpu \
      --config.cell=WORKDIR/summary.json

Character-level PTB, 2 layers of hidden (and embedding) size 32, one pass over the first 80,000
training characters (batch 20, BPTT 20, SGD lr 1, clip 5, U(-0.1, 0.1)), validation perplexity on
the first 8,000 validation characters: the exact search's children, so a cell found by a
weight-sharing search (``rnn_ptb_shared_cpu.py``) and the exact search's best (9.56 there,
2026-11-28, commit 076e8af) are
compared at one budget. ``test_ppl`` is on the whole test set at batch 1.

Runtime on the 2-core CPU (2026-12-02, commit 266660d, as the results after it; loaded by other
jobs): 55 s (15 s of training, the rest start-up,
compiling and the batch-1 test pass). Result: the best cell of a ``rnn_ptb_cpu:short`` seed-sweep
run (``val_ppl`` 9.73 in its search) retrains to validation perplexity 9.16, test 8.63; the cell
derived by ``rnn_ptb_shared_cpu.py`` (seed 0) to 31.83, test 32.43. ``:long`` trains the same model
3 epochs over the whole 5.0M-character training text (lr halved after each epoch) and scores the
whole validation set (not run yet). ``:quick`` is a tiny run for the tests (no measured result).
"""

import ml_collections


def get_config(arg: str | None = None):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.cell = "lstm"             # lstm | nascell | a workdir/summary.json of a cell search
  c.data = ml_collections.ConfigDict(dict(level="char", data_dir=""))
  c.lm = ml_collections.ConfigDict(dict(
      num_layers=2, hidden_size=32, embed_size=32, tie_embeddings=False, init_scale=0.1,
      dropout=0.0, variational=False, embed_dropout=0.0, batch_size=20, bptt=20, epochs=1,
      learning_rate=1.0, lr_decay=0.5, decay_after_epoch=4, max_grad_norm=5.0,
      eval_batch_size=20, test_batch_size=1, max_train_tokens=80_000, max_eval_tokens=8_000))
  if arg == "long":
    c.lm.epochs = 3
    c.lm.decay_after_epoch = 1
    c.lm.max_train_tokens = 0
    c.lm.max_eval_tokens = 0
  elif arg == "quick":
    c.lm.hidden_size = 8
    c.lm.embed_size = 8
    c.lm.max_train_tokens = 2_000
    c.lm.max_eval_tokens = 1_000
    c.lm.test_batch_size = 20
  elif arg:
    raise ValueError(f"lm_ptb_cpu config: unknown argument {arg!r}; use ':long', ':quick' or "
                     "nothing")
  c.lock()
  return c
