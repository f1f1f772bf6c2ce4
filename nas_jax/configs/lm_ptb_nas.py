"""The NASCell language model at the paper's size: 2 layers x 740, tied embeddings, 24.9M params.

  python experiments/train_lm.py --config experiments/configs/lm_ptb_nas.py --workdir /tmp/lm_nas

An accelerator config. Zoph & Le (2017), Table 2: the NAS cell (base 8) reaches test perplexity
67.9 with 32M parameters, 64.0 with shared (tied) embeddings at 25M, and 62.4 with shared
embeddings at 54M (``:large`` here). The paper gives neither the layers nor the hidden size of
these models; its search children have two layers, and two layers fit both of its counts with one
hidden size: 2 layers x 740 units give 32.3M parameters untied and 24.9M tied (the difference is
the 10,000 x 740 softmax), so this config is the 25M model; ``:large`` (2 x 1150) has 53.9M.
Parameters of a layer: input kernel (in, 8u), recurrent kernel (u, 8u), bias 8u; plus the tied
10,000 x u embedding and the softmax bias (the counts above are from the model's init; train_lm.py
logs and writes them as ``params``).

The paper publishes no regularisation for these runs (its final models come from a grid search over
learning rate, init, dropout and decay epoch). Chosen here, to be swept on an accelerator:

* the search children's recipe (``rnn_ptb.py``): variational dropout 0.5 on the inputs, outputs
  and recurrent state of each layer (Gal & Ghahramani 2016: 0.5 on inputs/outputs for their large
  model), word-type embedding dropout 0.1 (Merity et al.'s AWD-LSTM ``dropoute``), BPTT 35,
  batch 20, SGD lr 1, x0.8 per epoch after the 6th, clip 5, init U(-0.05, 0.05);
* tied input and output embeddings (Inan et al. 2016; Press & Wolf 2017), which the 25M count
  needs (tying forces embed_size = hidden_size);
* decoupled weight decay 1e-5 (``lm.LMConfig``: p -= lr * 1e-5 * p each step): our loss is summed
  over the 35 BPTT steps, so this is an L2 coefficient of 2.9e-7 on a per-token loss, between
  Gal's negligible decay and AWD-LSTM's 1.2e-6 (which trains ~750 epochs); over this schedule it
  would shrink a weight without gradient by about 12%;
* 39 epochs (Zaremba et al.'s medium length; the search children train 35).

Target (the paper's, not our result): test perplexity 64.0 (62.4 for ``:large``). Not yet run (no
measured result or runtime). ``--config.cell=WORKDIR/summary.json`` trains a searched cell at this
size instead; ``--config.lm.optimizer=adam --config.lm.learning_rate=1e-3`` trains with Adam(W).
``:quick``: the same model at hidden size 16 on 10,000 training tokens, one epoch (seconds, CPU;
tests).
"""

import ml_collections


def get_config(arg: str | None = None):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.cell = "nascell"          # nascell | lstm | a workdir/summary.json of a cell search
  c.data = ml_collections.ConfigDict(dict(level="word", data_dir=""))
  c.lm = ml_collections.ConfigDict(dict(
      num_layers=2, hidden_size=740, embed_size=740, tie_embeddings=True, init_scale=0.05,
      dropout=0.5, variational=True, embed_dropout=0.1, batch_size=20, bptt=35, epochs=39,
      learning_rate=1.0, lr_decay=0.8, decay_after_epoch=6, max_grad_norm=5.0,
      eval_batch_size=20, test_batch_size=1, max_train_tokens=0, max_eval_tokens=0,
      optimizer="sgd", weight_decay=1e-5))
  if arg == "large":
    c.lm.hidden_size = c.lm.embed_size = 1150
  elif arg == "quick":
    c.lm.epochs = 1
    c.lm.max_train_tokens = 10_000
    c.lm.max_eval_tokens = 2_000
    c.lm.hidden_size = c.lm.embed_size = 16
  elif arg:
    raise ValueError(f"lm_ptb_nas config: unknown argument {arg!r}; use ':large', ':quick' or "
                     "nothing")
  c.lock()
  return c
