"""Final training of a CIFAR-10 search's best CNN (Zoph & Le 2017, Section 4.1), for an accelerator.

  python experiments/train_child.py --search_workdir /tmp/nas_cifar10 \
      --config experiments/configs/cnn_cifar10_final.py --config.data.data_dir=DIR

The paper says of the final model only that a small grid search over the learning rate, weight
decay, batch-norm epsilon and the epoch of the learning-rate decay came first, then training "to
convergence", and that the test error was measured once, for the best model on validation. This
config does no grid search: it is DenseNet's CIFAR recipe (Huang et al. 2017), which the paper's
child training follows (Nesterov momentum 0.9, learning rate 0.1, weight decay 1e-4): 300 epochs,
batch 64, the learning rate divided by 10 at 50% and 75% of the epochs (``lr_schedule="step"``), on
the 45,000 training images with the paper's augmentation, scored on the 5,000 validation and the
10,000 official test images. Nothing is downloaded: CIFAR-10 must be in DIR (as for the search).

Variants (config argument): ``v1`` (default), ``v2``, ``v3``: the search space of an ``--arch``
given without ``--search_workdir`` (with one, its space is used); ``quick``: a CPU-sized smoke run
(2 epochs on 256 images, 128 for validation) for the tests.

Runtime: not measured (no CIFAR-10 on the project's machines); about 703 steps per epoch, 211k
steps in all. Result: none measured; the paper's test errors are 5.50% (v1, 4.2M parameters),
6.01% (v2) and 4.47% (v3).
"""

from nas_jax.configs import cnn_cifar10
from nas_jax import config as config_lib


def get_config(arg: str | None = None):
  arg = arg or "v1"
  if arg not in ("v1", "v2", "v3", "quick"):
    raise ValueError(f"cnn_cifar10_final config: unknown argument {arg!r}; use v1, v2, v3 or "
                     "quick")
  c = config_lib.default_final_config(cnn_cifar10.get_config(arg))
  c.child.epochs = 300
  c.child.batch_size = 64
  c.child.learning_rate = 0.1
  c.child.momentum = 0.9
  c.child.nesterov = True
  c.child.weight_decay = 1e-4
  c.child.lr_schedule = "step"
  c.keep_checkpoints = 2
  if arg == "quick":
    c.child.epochs = 2
    c.child.fast_compile = True
  c.lock()
  return c
