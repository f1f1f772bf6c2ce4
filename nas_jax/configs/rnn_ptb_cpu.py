"""A real recurrent-cell search on character-level Penn Treebank that a 2-core CPU can run.

  python experiments/search.py --config experiments/configs/rnn_ptb_cpu.py --workdir /tmp/nas_ptb_cpu
  python experiments/search.py --config experiments/configs/rnn_ptb_cpu.py --workdir /tmp/nas_ptb_cpu_random \
      --config.search.searcher=random

Base-8 cells; each child a 2-layer character-level LM (hidden size 32) trained on a budget of
80,000 characters of PTB's training text (one pass, batch 20, BPTT 20) and scored on a fixed
8,000-character slice of the validation set; reward 80 / ppl^2 (the paper's reward, on character
perplexities). 150 controller steps x 8 children = 1,200 cells; controller Adam 2.5e-3 (the paper's
5e-4 is for ~10x more updates). Character level keeps the softmax small so that the cell, the
searched part, is what costs time; word level is ``--config.data.level=word`` (10k-word softmax,
~4x slower per child; 2026-11-27, commit 5c3dba0). The 8 children of a step train together in one
vmapped program (``lm_child.vmap=True``; on a 2-core CPU 1.2x faster than one after another, see
benchmarks/cell_children.py; 2026-11-27, commit 3e98ad6).

Runtime on a 2-core CPU (2026-11-28, commit 076e8af, as the result after it): 33 min 46 s
(REINFORCE, sharing the cores with other jobs for part of it), 26 min 26 s (random search).
Result (one run per searcher, seed 0; ``python experiments/compare.py
--workdirs /tmp/nas_ptb_cpu,/tmp/nas_ptb_cpu_random``): mean reward of the first / last 300 cells
0.087 / 0.133 for REINFORCE against 0.088 / 0.084 for random search; best validation perplexity
9.56 against 9.65; 24 diverged children against 80. ``:short`` (24 steps, 192 cells, controller
Adam 0.01: at 2.5e-3 24 updates left the policy uniform) is for seed sweeps: 3 seeds per searcher
in docs/cell_search.md, where plain REINFORCE collapses onto cells no better than a unigram model
and ``--config.lm_child.reward_above_unigram=True`` fixes it (best ppl 9.71 +- 1.35 against random
search's 13.11 +- 7.38; the intervals overlap; 2026-12-02, commit b4e1a67). ``:quick`` is a tiny
run for the tests.
"""

from nas_jax.config import default_config


def get_config(arg: str | None = None):
  c = default_config("rnn_cell")
  c.data.name = "ptb"
  c.data.level = "char"
  c.lm_child.hidden_size = 32
  c.lm_child.embed_size = 32
  c.lm_child.epochs = 1
  c.lm_child.max_train_tokens = 80_000
  c.lm_child.max_eval_tokens = 8_000
  c.controller.learning_rate = 2.5e-3
  c.controller.baseline_decay = 0.9
  c.lm_child.vmap = True
  c.search.children_per_step = 8
  c.search.num_steps = 150
  if arg == "quick":
    c.lm_child.hidden_size = 8
    c.lm_child.embed_size = 8
    c.lm_child.max_train_tokens = 2_000
    c.lm_child.max_eval_tokens = 1_000
    c.search.children_per_step = 2
    c.search.num_steps = 2
  elif arg == "short":
    c.search.num_steps = 24
    c.controller.learning_rate = 0.01   # at 2.5e-3, 24 updates left the policy uniform
  elif arg:
    raise ValueError(f"rnn_ptb_cpu config: unknown argument {arg!r}; use ':short', ':quick' or "
                     "nothing")
  return c
