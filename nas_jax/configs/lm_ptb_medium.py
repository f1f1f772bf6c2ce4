"""Zaremba et al. (2014) *medium* PTB language model: 2x650 LSTM, dropout 0.5, 39 epochs.

  python experiments/train_lm.py --config experiments/configs/lm_ptb_medium.py --workdir /tmp/lm_medium

An accelerator config (a trainer check at the size of the paper's search children: 19.8M
parameters, ~20M in PAPER.md). Zaremba et al., Sec. 4.1: 650 units per layer, parameters
U(-0.05, 0.05), 50% dropout on the non-recurrent connections (the embedding's output, between the
layers, before the softmax), 39 epochs of SGD at learning rate 1 divided by 1.2 after each epoch
from the 7th on (``lr_decay`` 1/1.2; TensorFlow's ptb_word_lm tutorial uses 0.8), BPTT 35,
batch 20, gradient norm clipped at 5 (the loss summed over time steps, averaged over the batch),
untied embedding of 650. Target: Zaremba et al. report validation perplexity 86.2 and test 82.7;
not yet run here (no measured result). Runtime: not measured; on the project's shared 2-core CPU a
42-step fraction (29,400 tokens) did not finish within 2 minutes (< 300 tokens/s, so > 50 min per
epoch; 2026-12-02, commit f6b982f), hence an accelerator.
``:quick``: the same recipe at hidden size 16 on 10,000 training tokens, one epoch (seconds, CPU;
tests). ``--config.cell=nascell`` or a search's ``summary.json`` trains another cell at this recipe.
"""

import ml_collections


def get_config(arg: str | None = None):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.cell = "lstm"             # lstm | nascell | a workdir/summary.json of a cell search
  c.data = ml_collections.ConfigDict(dict(level="word", data_dir=""))
  c.lm = ml_collections.ConfigDict(dict(
      num_layers=2, hidden_size=650, embed_size=650, tie_embeddings=False, init_scale=0.05,
      dropout=0.5, variational=False, embed_dropout=0.0, batch_size=20, bptt=35, epochs=39,
      learning_rate=1.0, lr_decay=1 / 1.2, decay_after_epoch=6, max_grad_norm=5.0,
      eval_batch_size=20, test_batch_size=1, max_train_tokens=0, max_eval_tokens=0,
      optimizer="sgd", weight_decay=0.0))
  if arg == "quick":
    c.lm.epochs = 1
    c.lm.max_train_tokens = 10_000
    c.lm.max_eval_tokens = 2_000
    c.lm.hidden_size = 16
    c.lm.embed_size = 16
  elif arg:
    raise ValueError(f"lm_ptb_medium config: unknown argument {arg!r}; use ':quick' or nothing")
  c.lock()
  return c
