"""Zaremba et al. (2014) *small* PTB language model: 2x200 LSTM, 13 epochs, no dropout.

  python experiments/train_lm.py --config experiments/configs/lm_ptb_small.py --workdir /tmp/lm_small

SGD lr 1, halved every epoch after the 4th, BPTT 20, batch 20, init U(-0.1, 0.1), gradient norm
clipped at 5. Runtime (the run of the result below): 39 min for the 13 epochs on a 2-core CPU
(2,347 s of training, some epochs sharing the cores; quiet epochs take 151-163 s at about
6,000 tokens/s). Result (2026-11-27, commit 6727696, one run; a later rerun gave test 114.79):
test perplexity 113.41, validation 119.54 (best 118.89, epoch 5); the paper reports test
perplexity 114.5 (a PyTorch nn.LSTM version on this machine ends at 112.6 on this corpus, as
measured by the project on 2026-11-27, commit 6d28f3f). ``--config.cell=nascell`` or
``--config.cell=WORKDIR/summary.json`` trains the NASCell or a searched cell instead (no measured
result). ``:quick`` trains one epoch on 20k tokens (tests). """

import ml_collections


def get_config(arg: str | None = None):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.cell = "lstm"             # lstm | nascell | a workdir/summary.json of a cell search
  c.data = ml_collections.ConfigDict(dict(level="word", data_dir=""))
  c.lm = ml_collections.ConfigDict(dict(
      num_layers=2, hidden_size=200, embed_size=200, tie_embeddings=False, init_scale=0.1,
      dropout=0.0, variational=False, embed_dropout=0.0, batch_size=20, bptt=20, epochs=13,
      learning_rate=1.0, lr_decay=0.5, decay_after_epoch=4, max_grad_norm=5.0,
      eval_batch_size=20, test_batch_size=1, max_train_tokens=0, max_eval_tokens=0))
  if arg == "quick":
    c.lm.epochs = 1
    c.lm.max_train_tokens = 20_000
    c.lm.max_eval_tokens = 5_000
    c.lm.hidden_size = 32
    c.lm.embed_size = 32
  elif arg:
    raise ValueError(f"lm_ptb_small config: unknown argument {arg!r}; use ':quick' or nothing")
  c.lock()
  return c
