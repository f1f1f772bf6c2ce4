"""Weight-sharing (ENAS-style) recurrent-cell search on character-level PTB: minutes on a CPU.

  python experiments/search.py --config experiments/configs/rnn_ptb_shared_cpu.py --workdir /tmp/rnnshared_s0
  python experiments/search.py --config experiments/configs/rnn_ptb_shared_cpu.py \
      --workdir /tmp/rnnshared_s0_random --config.search.searcher=random
  python experiments/train_lm.py --config experiments/configs/lm_ptb_cpu.py \
      --workdir /tmp/rnnshared_s0_retrain --config.cell=/tmp/rnnshared_s0/summary.json

The space, the child LM and the controller of ``rnn_ptb_cpu.py`` (base-8 cells; 2 layers of
hidden and embedding size 32; Adam 2.5e-3, baseline decay 0.9; 8 cells per controller step), but
one LM whose leaf projections, embedding and softmax every cell shares
(``nas_jax/training/shared_rnn.py``). 10 epochs, each: 50 minibatches (64 streams x 20
characters of the whole training text, the state carried), one freshly sampled cell each, train
the shared weights with the exact child's SGD step (lr 1 and clip 5 on the loss summed over the
20 BPTT steps = lr 20 and clip 0.25 on the per-token mean used here; cosine to 0 over the run);
then 20 controller steps of 8 cells, each scored on one validation window (50 streams x 20
characters, zero state) of the first 8,000 validation characters, reward 80 / ppl^2. Finally 64
cells scored on the whole 8,000 characters, state carried. The third command retrains the
derived cell at the exact search's child budget (one pass over 80,000 characters).

Runtime and result (2026-12-03, commit 94e798e; 2-core CPU, alone, empty compilation cache;
seeds 0, 1, 2 by
``python experiments/shared_seeds.py --space ptb --root /tmp/ws --seeds 0,1,2``): search + derive
53 ± 19 s, retrain 16 s. The shared weights learn no more than the characters' unigram
frequencies: every derived cell scores validation perplexity 20.07-20.09 under them, the
controller collapses onto near-all-``mul`` cells, and the derived cell retrains to 25.61 ± 13.50
(random search with the same weights: 51.95 ± 48.85; the LSTM at the same budget 25.44 ± 11.00;
the exact ``rnn_ptb_cpu`` search's best, one run, 2026-11-28: 9.56). docs/weight_sharing.md has the
diagnosis. ``:quick`` is a tiny run for the tests (base-2 cells;
no measured result).
"""

from nas_jax.configs import rnn_ptb_cpu


def get_config(arg: str | None = None):
  c = rnn_ptb_cpu.get_config()   # its child LM, its controller (Adam 2.5e-3, baseline decay 0.9)
  c.lm_child.max_train_tokens = 0    # the shared weights read the whole training text
  s = c.shared
  s.enabled = True
  s.epochs = 10
  s.train_steps = 50
  s.children_per_batch = 1
  s.controller_steps = 20
  s.derive_samples = 64
  s.derive_top_k = 5
  s.batch_size = 64
  s.eval_batch_size = 50
  s.learning_rate = 20.0     # the exact child's SGD: lr 1, clip 5 on the loss summed over 20 steps
  s.lr_min = 0.0
  s.lr_schedule = "cosine"
  s.momentum = 0.0
  s.nesterov = False
  s.weight_decay = 0.0
  s.grad_clip = 0.25
  if arg == "quick":
    c.search_space.base = 2
    c.lm_child.hidden_size = 8
    c.lm_child.embed_size = 8
    c.lm_child.max_train_tokens = 2_000
    c.lm_child.max_eval_tokens = 1_000
    c.search.children_per_step = 2
    s.epochs = 2
    s.train_steps = 3
    s.controller_steps = 2
    s.derive_samples = 3
    s.derive_top_k = 2
    s.batch_size = 4
    s.eval_batch_size = 4
    s.fast_compile = True
  elif arg:
    raise ValueError(f"rnn_ptb_shared_cpu config: unknown argument {arg!r}; use ':quick' or "
                     "nothing")
  return c
