"""CNN search on scikit-learn's 8x8 digits: the main job, real data, no download.

  python experiments/search.py --config experiments/configs/cnn_digits.py --workdir /tmp/nas_digits

Runtime: about 5 minutes on a 2-core CPU alone (4 min 35 s with an empty compilation cache,
2026-12-04; random search 6 min 52 s with an earlier session's code). 16 controller steps x 8 children (128 architectures, 3 to 5 layers), each child
trained 4 epochs on 1,297 images and scored on 250; controller Adam 0.01 and baseline decay 0.8
(the paper: 6e-4, 0.95) so that 16 updates are enough to see learning. The children keep a
constant learning rate (the CIFAR-10 config decays it DenseNet's way): with 4 epochs a decay at
epoch 2 would leave the reward epochs (3 and 4) at 1/10 of the rate before the network has learnt
much.

Result (seed 0, one run; ``python experiments/compare.py --workdirs /tmp/nas_digits``):
REINFORCE's mean reward rises from 0.623 (first 32 architectures) to 0.925 (last 32), top-1/5/15
unique 1.000/0.993/0.985 (2026-12-04; an earlier session's code: 0.622/0.919, random search
0.658/0.838).
The controller learns to avoid 1-wide filters, which cannot see spatial structure through global
average pooling. Random search at the same budget: add ``--config.search.searcher=random``.
``:seeds`` is the first 8 steps (64 architectures), the README's 3-seed comparison of REINFORCE
and random search (their intervals overlap at this budget). ``:quick`` is a tiny run for the
tests (no measured result).
"""

from nas_jax.config import default_config


def get_config(arg: str | None = None):
  c = default_config()
  c.data.name = "digits"
  c.search_space.num_filters = (8, 16, 24, 32)
  c.search_space.start_layers = 3
  c.search_space.layers_increment = 1
  c.search_space.increment_every = 48
  c.search_space.max_layers = 5
  c.child.epochs = 4
  c.child.reward_last_epochs = 2
  c.child.batch_size = 64
  c.child.fast_compile = True
  c.controller.learning_rate = 0.01
  c.controller.baseline_decay = 0.8
  c.search.num_steps = 16
  c.search.children_per_step = 8
  if arg == "quick":
    c.search_space.num_filters = (4, 8)
    c.search_space.start_layers = 2
    c.search_space.max_layers = 2
    c.child.epochs = 1
    c.child.reward_last_epochs = 1
    c.data.max_train = 256
    c.search.num_steps = 2
    c.search.children_per_step = 2
  elif arg == "seeds":   # the first 8 steps (64 architectures) of the main job, for seed sweeps
    c.search.num_steps = 8
  elif arg:
    raise ValueError(f"cnn_digits config: unknown argument {arg!r}; use ':seeds', ':quick' or "
                     "nothing")
  return c
