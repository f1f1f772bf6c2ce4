"""ENAS's recurrent-cell space searched with weight sharing (ENAS's own setting), on a CPU.

  python experiments/search.py --config experiments/configs/rnn_ptb_enas_shared_cpu.py --workdir /tmp/enas_shared
  python experiments/train_lm.py --config experiments/configs/lm_ptb_cpu.py \
      --workdir /tmp/enas_shared_retrain --config.cell=/tmp/enas_shared/summary.json

``rnn_ptb_shared_cpu.py``'s schedule (10 epochs of 50 minibatches, 20 controller steps of 8 cells,
64 derived; ENAS's SGD on the shared weights: lr 20 and clip 0.25 on the per-token loss) on
ENAS's space and controller settings (``rnn_ptb_enas_cpu.py``: 8 nodes; temperature 5, tanh
constant 2.25, entropy weight 1e-5). One language model holds the weights of every (node, node
read, activation) (``nas_jax/spaces/enas_cell.py``); a cell uses 7 of those matrices. Not the paper's PTB search.
``:quick`` is a tiny run for the tests (4 nodes).
"""

from nas_jax.configs import rnn_ptb_enas_cpu, rnn_ptb_shared_cpu


def get_config(arg: str | None = None):
  if arg not in (None, "quick"):
    raise ValueError(f"rnn_ptb_enas_shared_cpu config: unknown argument {arg!r}; use ':quick' or "
                     "nothing")
  c = rnn_ptb_shared_cpu.get_config(arg)
  return rnn_ptb_enas_cpu.apply_enas(c, nodes=4 if arg == "quick" else 8)
