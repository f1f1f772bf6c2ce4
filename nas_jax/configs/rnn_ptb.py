"""Recurrent-cell search on Penn Treebank with the paper's settings (Zoph & Le 2017, Section 4.2).

  python experiments/search.py --config experiments/configs/rnn_ptb.py --workdir /tmp/nas_ptb

Base-8 cells; every child a 2-layer LM with hidden size 540 (20.1M parameters with the 10k
vocabulary, the size of Zaremba et al.'s medium model), trained 35 epochs with embedding and
variational dropout; reward 80 / (validation perplexity)^2; controller Adam 5e-4, one update per
10 architectures (the paper applied an update once 10 gradients had accumulated); 15,000
architectures. Runtime: the paper ran this on 400 CPUs; it is not a single-machine job, and it has
not been run with nas_jax, so there is no measured runtime or result. For a CPU-sized search see
rnn_ptb_cpu.py.
"""

from nas_jax.config import default_config


def get_config(arg: str | None = None):
  if arg:
    raise ValueError(f"rnn_ptb config: unknown argument {arg!r}; see rnn_ptb_cpu.py for CPU runs")
  c = default_config("rnn_cell")
  c.data.name = "ptb"
  c.lm_child.hidden_size = 540
  c.lm_child.embed_size = 540
  c.lm_child.epochs = 35
  c.lm_child.dropout = 0.5
  c.lm_child.variational = True
  c.lm_child.embed_dropout = 0.1
  c.lm_child.bptt = 35
  c.lm_child.decay_after_epoch = 6
  c.lm_child.lr_decay = 0.8
  c.lm_child.reward_constant = 80.0
  c.controller.learning_rate = 5e-4
  c.search.children_per_step = 10
  c.search.num_steps = 1500
  return c
