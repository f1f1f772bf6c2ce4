"""Weight-sharing (ENAS-style) CNN search on scikit-learn's 8x8 digits: minutes on a CPU.

  python experiments/search.py --config experiments/configs/cnn_digits_shared.py \
      --workdir /tmp/nas_digits_shared
  python experiments/train_child.py --search_workdir /tmp/nas_digits_shared \
      --arch "$(python -c 'import json;print(json.load(open("/tmp/nas_digits_shared/summary.json"))["best"]["description"])')" \
      --config experiments/configs/cnn_digits_final.py

The space is the digits search's (filters 1/3/5/7 x 1/3/5/7, 8/16/24/32 filters, skip
connections) at one depth, 4 layers. One max-size network holds every child's weights
(``nas_jax/training/shared_cnn.py``; SGD, Nesterov 0.9, lr 0.1 cosine to 0, weight decay 1e-4).
10 epochs, each: one pass over the 1,297 training digits (20 minibatches of 64, one sampled
architecture each) trains the shared weights, then 4 controller steps of 8 architectures each
scored on a validation minibatch of 64 (reward = accuracy, as ENAS; cubed, rewards of the
still-poor shared network early on are ~0 and the controller chases noise); finally 32
architectures are sampled and scored on all 250 validation digits. Controller: Adam 0.005,
baseline decay 0.8, ENAS's tanh constant 1.5 and an entropy bonus 1e-3 (with Adam 0.01 and no
bonus the policy's entropy fell from 21 to 2 nats in 40 updates, onto what was trained first;
2026-12-02, commit 4ee1304).
Random search with the same shared weights: ``--config.search.searcher=random``.

Runtime and result (2026-12-03, commit 94e798e, before the digits children drew their initial
weights on the host on 2026-12-04, so a rerun gives other numbers; 2-core CPU, alone, empty
compilation cache; seeds 0, 1, 2 by
``python experiments/shared_seeds.py --space digits --root /tmp/ws --seeds 0,1,2``): search + derive
49 ± 6 s; the derived best retrained at the exact search's child budget
(``cnn_digits_final:search_budget``, 11 s) scores validation 0.960 ± 0.040 and test 0.956 ± 0.055
(random search with the same weights: 0.929 ± 0.083 / 0.935 ± 0.094; the exact 128-child search's
best: 0.967 ± 0.040 / 0.975 ± 0.041); docs/weight_sharing.md. ``:quick`` is a tiny run for the
tests (no measured result).
"""

from nas_jax.configs import cnn_digits


def get_config(arg: str | None = None):
  c = cnn_digits.get_config()
  c.search_space.start_layers = 4
  c.search_space.layers_increment = 0
  c.search_space.max_layers = 0
  c.search.children_per_step = 8
  c.controller.learning_rate = 0.005
  c.controller.tanh_constant = 1.5
  c.controller.entropy_weight = 1e-3
  s = c.shared
  s.enabled = True
  s.epochs = 10
  s.train_steps = 0            # one pass over the training set per epoch
  s.children_per_batch = 1
  s.controller_steps = 4
  s.derive_samples = 32
  s.derive_top_k = 5
  s.batch_size = 64
  s.eval_batch_size = 64
  s.reward_power = 1.0
  s.learning_rate = 0.1
  s.lr_min = 0.0
  s.lr_schedule = "cosine"
  s.weight_decay = 1e-4
  if arg == "quick":
    c.search_space.num_filters = (4, 8)
    c.search_space.start_layers = 2
    c.data.max_train = 128
    c.search.children_per_step = 2
    s.epochs = 2
    s.train_steps = 2
    s.controller_steps = 2
    s.derive_samples = 3
    s.derive_top_k = 2
    s.batch_size = 32
    s.fast_compile = True
  elif arg:
    raise ValueError(f"cnn_digits_shared config: unknown argument {arg!r}; use ':quick' or nothing")
  return c
