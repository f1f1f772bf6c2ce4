"""Weight-sharing (ENAS-style) recurrent-cell search on word-level PTB for one accelerator.

  python experiments/search.py --config experiments/configs/rnn_ptb_shared.py --workdir /tmp/nas_ptb_shared
  python experiments/train_lm.py --config experiments/configs/lm_ptb_nas.py --workdir /tmp/lm_ptb_shared \
      --config.cell=/tmp/nas_ptb_shared/summary.json

Near ENAS's PTB search (Pham et al. 2018; ``scripts/ptb_search.sh`` and ``src/ptb/ptb_enas_child.py``
of github.com/melodyguan/enas, read for this config): one recurrent layer whose cell is searched,
BPTT 35, batch 20, tied embedding and softmax, 100 epochs of the shared weights, each one pass
over the 929,589 training words (1,327 windows) followed by 100 controller steps of 10
architectures (``controller_train_steps=100``, ``controller_num_aggregate=10``); controller Adam
0.001, tanh constant 2.5, temperature 5.0, entropy weight 0.001; the reward minibatch is one
random validation window scored from a zero state (ENAS's ``valid_rl``, ``should_carry=False``),
the training windows carry the state. The shared weights: ENAS's SGD at lr 0.25 and gradient
norm bound 10 on the loss summed over the 35 steps are lr 8.75 and bound 0.286 on the per-token
mean loss used here; l2 1e-7 (here decoupled weight decay).

What differs from ENAS, or is a guess:
* the space is Zoph & Le's base-8 tree (``search_space``); ENAS's cell is a 12-node DAG with
  highway connections and BatchNorm, whose weights are chosen per edge;
* hidden and embedding size 1000 (ENAS's paper; its script uses 720): 16.0M weights in the cell
  (input and recurrent kernels 1000 x 8000), 10M in the tied embedding;
* the learning rate decays by a cosine from 8.75 to 0.0175 over the 100 epochs (ENAS: x0.95 per
  epoch from epoch 12 down to 0.0005 x 35; ``config.shared`` has no exponential decay);
* dropout: variational 0.5 on the layer's input, output and recurrent state, word-type embedding
  dropout 0.25 (ENAS: keep 0.25 / 0.25 / 0.75 on input / output / state, 0.75 on the embedding);
* reward 80 / ppl^2 (Zoph & Le's; ENAS: c / ppl); baseline decay 0.99 (a guess); derive: 100
  sampled cells scored on the whole validation set (ENAS scores its samples on one minibatch).
Retrain the derived cell with ``lm_ptb_nas.py`` (2 x 740, tied; the command above) or any LM
config. Runtime and result: not run here (no accelerator in the session that wrote it); ``:quick``
is a CPU smoke run for the tests (seconds after compiling; no measured result).
"""

from nas_jax.config import default_config


def get_config(arg: str | None = None):
  c = default_config("rnn_cell")
  c.data.name = "ptb"
  c.data.level = "word"
  lmc = c.lm_child
  lmc.num_layers = 1
  lmc.hidden_size = 1000
  lmc.embed_size = 1000
  lmc.tie_embeddings = True
  lmc.init_scale = 0.05
  lmc.dropout = 0.5
  lmc.variational = True
  lmc.embed_dropout = 0.25
  lmc.bptt = 35
  lmc.max_train_tokens = 0
  lmc.max_eval_tokens = 0
  lmc.reward_constant = 80.0
  c.controller.learning_rate = 0.001
  c.controller.tanh_constant = 2.5
  c.controller.temperature = 5.0
  c.controller.entropy_weight = 0.001
  c.controller.baseline_decay = 0.99
  c.search.children_per_step = 10
  s = c.shared
  s.enabled = True
  s.epochs = 100
  s.train_steps = 0            # one pass over the training words per epoch
  s.children_per_batch = 1
  s.controller_steps = 100
  s.derive_samples = 100
  s.derive_top_k = 5
  s.batch_size = 20
  s.eval_batch_size = 20
  s.learning_rate = 8.75
  s.lr_min = 0.0175
  s.lr_schedule = "cosine"
  s.momentum = 0.0
  s.nesterov = False
  s.weight_decay = 1e-7
  s.grad_clip = 0.286
  if arg == "quick":
    c.search_space.base = 2
    lmc.hidden_size = lmc.embed_size = 8
    lmc.max_train_tokens = 2_000
    lmc.max_eval_tokens = 1_000
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
    raise ValueError(f"rnn_ptb_shared config: unknown argument {arg!r}; use ':quick' or nothing")
  return c
