"""ENAS's recurrent-cell space (Pham et al. 2018) searched as the paper's cells are, on a CPU.

  python experiments/search.py --config experiments/configs/rnn_ptb_enas_cpu.py:short --workdir /tmp/enas_ptb

The space is ENAS's, not Zoph & Le's (``nas_jax/spaces/enas_cell.py``: a DAG of 8 highway nodes,
each reading one earlier node and picking tanh, ReLU, identity or sigmoid, with weights of its
own for each (node read, activation) pair; the output the mean of the loose ends); its results are never the paper's PTB search.
Everything else is ``rnn_ptb_cpu.py``'s: character-level PTB, each child a 2-layer LM (hidden
and embedding size 32) trained on 80,000 characters and scored on 8,000 validation characters,
reward 80 / ppl^2, 8 children per controller step. The controller takes ENAS's sampling
settings as google-research's ``enas_lm/src/controller.py`` sets them: logits divided by a
temperature of 5, then 2.25 tanh(logits); an entropy term of weight 1e-5 (here a bonus in the
loss, there added to the reward). Its learning rate is ``rnn_ptb_cpu``'s (Adam 2.5e-3; ``:short``:
0.01), ENAS's 5e-5 being for about 10^4 updates. ENAS on PTB used 12 nodes at hidden size 1000;
8 nodes keep a CPU child at about the paper's cell's cost. ``:short`` is 24 steps (192 cells),
as ``rnn_ptb_cpu:short``; ``:quick`` a tiny run for the tests (4 nodes).
"""

from nas_jax.configs import rnn_ptb_cpu


def apply_enas(c, nodes: int = 8):
  """``c`` (an ``rnn_ptb_cpu``-shaped config) with ENAS's space and controller settings."""
  with c.unlocked():
    c.search_space = type(c.search_space)(dict(name="enas_cell", nodes=nodes,
                                               activations=("tanh", "relu", "identity",
                                                            "sigmoid")))
  c.controller.temperature = 5.0
  c.controller.tanh_constant = 2.25
  c.controller.entropy_weight = 1e-5
  return c


def get_config(arg: str | None = None):
  if arg not in (None, "quick", "short"):
    raise ValueError(f"rnn_ptb_enas_cpu config: unknown argument {arg!r}; use ':short', ':quick' "
                     "or nothing")
  c = apply_enas(rnn_ptb_cpu.get_config(arg), nodes=4 if arg == "quick" else 8)
  return c
