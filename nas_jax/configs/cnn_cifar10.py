"""CNN search on CIFAR-10 with the paper's settings (Zoph & Le 2017, Section 4.1).

  python experiments/search.py --config experiments/configs/cnn_cifar10.py \
      --config.data.data_dir=DIR --workdir /tmp/nas_cifar10

Variants (config argument): ``v1`` (default: no strides, no pooling), ``v2`` (strides predicted
from [1,2,3]), ``v3`` (filters [6,12,24,36], 13 predicted layers of 3 convs each, max pooling
fixed after the 12th and 24th conv), ``quick`` (a CPU-sized smoke run on a subset).

The paper's budget: 12,800 architectures (1,600 controller steps x 8 children), each trained 50
epochs on 45,000 images and rewarded by (max validation accuracy of the last 5 epochs)^3 on 5,000.
Child recipe: the paper's (SGD, Nesterov momentum 0.9, lr 0.1, weight decay 1e-4), which is
DenseNet's (Huang et al. 2017); the paper gives no batch size or schedule for the children, so
DenseNet's are used: batch 64, lr divided by 10 at 50% and 75% of the epochs
(``child.lr_schedule="step"``).
Runtime: in the paper this took 800 GPUs for weeks; this config has not been run to the end with
nas_jax, so there is no measured runtime or result. CIFAR-10 must be in DATA_DIR (the python
archive cifar-10-python.tar.gz, or a tfds array_record build); nothing is downloaded.
"""

from nas_jax.config import default_config


def get_config(arg: str | None = None):
  c = default_config()
  c.data.name = "cifar10"
  c.child.epochs = 50
  c.child.reward_last_epochs = 5
  c.child.batch_size = 64
  c.child.lr_schedule = "step"
  c.controller.learning_rate = 6e-4
  c.search.num_steps = 1600
  c.search.children_per_step = 8
  arg = arg or "v1"
  if arg == "v2":
    c.search_space.predict_strides = True
  elif arg == "v3":
    c.search_space.num_filters = (6, 12, 24, 36)
    c.search_space.convs_per_layer = 3
    c.search_space.start_layers = 13
    c.search_space.layers_increment = 0
    c.search_space.pool_after_layers = (3, 7)
  elif arg == "quick":
    c.data.max_train = 256
    c.data.num_validation = 128
    c.search_space.num_filters = (4, 8)
    c.search_space.start_layers = 2
    c.child.epochs = 1
    c.child.reward_last_epochs = 1
    c.child.batch_size = 64
    c.search.num_steps = 2
    c.search.children_per_step = 2
  elif arg != "v1":
    raise ValueError(f"cnn_cifar10 config: unknown argument {arg!r}; use v1, v2, v3 or quick")
  return c
