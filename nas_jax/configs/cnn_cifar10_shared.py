"""Weight-sharing (ENAS-style) CNN search on CIFAR-10 for one accelerator: ENAS's macro schedule.

  python experiments/search.py --config experiments/configs/cnn_cifar10_shared.py \
      --config.data.data_dir=DIR --workdir /tmp/nas_cifar10_shared

The schedule of ENAS's macro search (Pham et al. 2018; ``scripts/cifar10_macro_search.sh`` of
github.com/melodyguan/enas, read for this config): 310 epochs of the shared weights, batch 128,
12 layers with pooling after layers 3 and 7 (ENAS: ``pool_distance = num_layers // 3``), 36
filters per layer, SGD with the learning rate in cosine restarts from 0.05 to 0.0005 (SGDR, first
period 10 epochs, each next one twice as long: 10+20+40+80+160 = 310), ``l2_reg`` 0.00025; after
each epoch 50 controller steps of 20 architectures (``controller_num_aggregate=20``), Adam 0.001,
``tanh_constant`` 1.5, entropy weight 1e-4, reward = the accuracy on one validation minibatch.

What differs from ENAS, or is a guess:
* the space is this library's (Zoph & Le's): each layer's filter height and width in {1,3,5,7},
  its 36 filters, skip connections; ENAS's macro layers choose among 6 ops (3x3/5x5 conv and
  separable conv, 3x3 max/avg pool) with separate weights;
* not implemented: ENAS's auxiliary head, dropout (keep 0.9), the skip-density penalty
  (``skip_target`` 0.4, ``skip_weight`` 0.8), ``op_tanh_reduce`` 2.5;
* guesses (not read in ENAS's code here): Nesterov momentum 0.9; ``weight_decay`` = ENAS's
  ``l2_reg`` value (ENAS adds it to the loss as an L2 term, which may mean twice the decay);
  gradient norm clipped at 5 (ENAS's ``grad_bound`` default, as recalled); baseline decay 0.99;
  derive 100 sampled architectures scored on the 5,000 validation images;
* BatchNorm uses each child's batch statistics also when a child is scored (ENAS's code scores
  with the shared moving averages): see ``nas_jax/training/shared_cnn.py``.
Runtime: not run to the end here (no CIFAR-10 on these machines). ``:quick`` is a CPU-sized smoke
run (the tests run it on ``tfds.testing.mock_data``).
"""

from nas_jax.config import default_config


def get_config(arg: str | None = None):
  c = default_config()
  c.data.name = "cifar10"
  sp = c.search_space
  sp.num_filters = (36,)
  sp.start_layers = 12
  sp.layers_increment = 0
  sp.pool_after_layers = (3, 7)
  c.controller.learning_rate = 0.001
  c.controller.tanh_constant = 1.5
  c.controller.entropy_weight = 1e-4
  c.controller.baseline_decay = 0.99
  c.search.children_per_step = 20
  s = c.shared
  s.enabled = True
  s.epochs = 310
  s.train_steps = 0            # one pass over the 45,000 training images per epoch
  s.children_per_batch = 1
  s.controller_steps = 50
  s.derive_samples = 100
  s.derive_top_k = 5
  s.batch_size = 128
  s.eval_batch_size = 128
  s.reward_power = 1.0
  s.learning_rate = 0.05
  s.lr_min = 0.0005
  s.lr_schedule = "sgdr"
  s.lr_t0 = 10
  s.lr_t_mul = 2
  s.momentum = 0.9
  s.nesterov = True
  s.weight_decay = 0.00025
  s.grad_clip = 5.0
  if arg == "quick":
    c.data.max_train = 256
    c.data.num_validation = 128
    sp.num_filters = (4, 8)
    sp.start_layers = 2
    sp.pool_after_layers = (0,)
    c.search.children_per_step = 2
    s.epochs = 2
    s.train_steps = 2
    s.controller_steps = 2
    s.derive_samples = 2
    s.derive_top_k = 1
    s.batch_size = 32
    s.eval_batch_size = 64
    s.fast_compile = True
  elif arg:
    raise ValueError(f"cnn_cifar10_shared config: unknown argument {arg!r}; use ':quick' or nothing")
  return c
