"""Weight-sharing CNN children (ENAS, Pham et al. 2018): one max-size network, every child a mask.

The masked max-size network of :mod:`nas_jax.spaces.masked_cnn` computes an exact child from a
max-size weight set: a child's fh x fw kernel is the centre of the largest one (kernel sharing as
in Single-Path NAS), its N filters are the first N channels, its skip connections are the
connection masks. With *one* weight set for all children instead of one per child it is ENAS's
shared network: a child's forward pass is ``MaskedCNN.apply(shared_params, ..., child_masks,
x)``, and the gradient of a child's loss reaches only the weights that child uses.

BatchNorm. A shared network has no running statistics that fit every child: the mean and
variance of a channel depend on the architecture in front of it. Children here are always
normalised with the statistics of the batch they see, in training and in evaluation (the
one-shot practice of Bender et al. 2018 and of later weight-sharing benchmarks); no running
averages are kept. (ENAS's TF code evaluates a child with ``is_training=False``, i.e. with moving
averages shared by all children.) A child's score therefore depends on its evaluation batch; the
batches are fixed per controller step (:func:`eval_batches`), so scores are reproducible.

Programs (:func:`programs`, jitted once per network):

* ``train_step(params, opt_state, marcs_N, images, labels, idx_B, key, step)``: one SGD step on
  the mean loss of N children on the same minibatch (ENAS: N = 1);
* ``eval_step(params, marcs_M, images, labels, idx_B, valid_B) -> correct_M``: M children on one
  batch, vmapped over their masks with the shared weights broadcast (``in_axes=None``).

On CPU, a vmapped conv whose kernel differs per child lowers to a grouped convolution (slow,
``docs/performance.md``); the masked kernels do differ per child (the window and channel masks
multiply the shared kernel), so the conv keeps ``MaskedCNN``'s ``"unrolled"`` rule: M plain convs
in one program. ``docs/weight_sharing.md`` has the measurement.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nas_jax.errors import ConfigError
from nas_jax.spaces import base
from nas_jax.spaces.cnn import CNNArch
from nas_jax.spaces.masked_cnn import MaskedArch, MaskedCNN, exact_param_count, stack_archs
from nas_jax.training import data as data_lib, optim, shared as shared_lib, trainer


def full_arch(net: MaskedCNN) -> MaskedArch:
  """The masks of the whole max-size network (every window, channel and allowed connection)."""
  g, L = net._geometry, net.num_layers  # pylint: disable=protected-access
  KH, KW = net.max_kernel
  conn = np.zeros((L, L + 1), np.float32)
  for i, src in enumerate(g.sources):
    conn[i, list(src)] = 1.0
  return MaskedArch(np.ones((L, KH, KW), np.float32), np.ones((L, net.max_filters), np.float32),
                    conn, np.ones((L,), np.float32), np.asarray(g.in_canvas, np.int32),
                    np.asarray(g.out_canvas, np.int32))


def init(net: MaskedCNN, key: jax.Array) -> dict:
  """Shared parameters: ``MaskedCNN.init`` of the whole network (LeCun normal, its fan-ins)."""
  params, _ = net.init(key, full_arch(net))
  return params


def batch_stats_placeholder(net: MaskedCNN) -> dict:
  """Running statistics ``MaskedCNN.apply`` takes; unused in batch-statistics mode."""
  F, convs = net.max_filters, net.space.convs_per_layer
  return {f"BatchNorm_{k}": {"mean": jnp.zeros((F,)), "var": jnp.ones((F,))}
          for k in range(net.num_layers * convs)}


def apply_children(net: MaskedCNN, params: dict, marcs_M: MaskedArch, x_BxHxWxC: jax.Array,
                   batch_stats: dict | None = None, train: bool = True) -> jax.Array:
  """Logits_MxBxK of M children (masks stacked on axis 0) sharing ``params``.

  ``train=True`` (what the search uses): BatchNorm on the batch's statistics. ``train=False``
  normalises with ``batch_stats`` (one set, shared; for tests against the exact child).
  """
  stats = batch_stats_placeholder(net) if batch_stats is None else batch_stats
  return jax.vmap(lambda m: net.apply(params, stats, m, x_BxHxWxC, train=train)[0])(marcs_M)


class Programs(NamedTuple):
  train_step: object  # (params, opt_state, marcs_N, images, labels, idx_B, key, step)
                      #   -> params, opt_state, loss
  eval_step: object   # (params, marcs_M, images, labels, idx_B, valid_B) -> correct_M


@functools.lru_cache(maxsize=8)
def programs(net: MaskedCNN, cfg, augment: bool, steps_per_epoch: int,
             total_steps: int, devices: tuple = ()) -> Programs:
  """The jitted train and eval programs of the shared network ``net`` (``cfg``: SharedConfig).

  ``train_step``: the minibatch of B examples is split among the N children (child n trains on
  examples n B/N to (n+1) B/N, BatchNorm on those); the loss is the mean over all of them. With
  several ``devices`` each holds N / len(devices) children and their examples (``shard_map``):
  it computes its mean loss and gradients, which are averaged across the devices (``pmean``),
  so the update is one device's up to the order of the sums. ``eval_step`` splits its M children
  over the devices where M divides evenly (no communication).
  """
  tx = optim.shared_optimizer(cfg, steps_per_epoch, total_steps)
  stats = batch_stats_placeholder(net)

  def grads(params, marcs_n, x_n, y_n):
    """Mean loss and gradients of n children, child k on its examples x_n[k]."""
    def loss_fn(p):
      logits_nxbxK = jax.vmap(lambda m, x: net.apply(p, stats, m, x, train=True)[0])(marcs_n, x_n)
      return optax.softmax_cross_entropy_with_integer_labels(logits_nxbxK, y_n).mean()
    loss, g = jax.value_and_grad(loss_fn)(params)
    if len(devices) > 1:
      loss, g = jax.lax.pmean((loss, g), "children")
    return loss, g

  def correct(params, marcs_M, x, y, valid_B):
    logits = apply_children(net, params, marcs_M, x)
    return jnp.sum((jnp.argmax(logits, -1) == y) & valid_B, axis=-1)

  grads = trainer.on_devices(grads, devices, "rccc", "rr")
  # every device (and process) gets every child's count
  split = trainer.on_devices(correct, devices, "rcrrr", "r", gather=True)

  def train_step(params, opt_state, marcs_N, images, labels, idx_B, key, step):
    x, y = images[idx_B], labels[idx_B]
    if augment:
      x = data_lib.augment_batch(jax.random.fold_in(key, step), x)
    n = marcs_N.connections.shape[0]
    loss, g = grads(params, marcs_N, x.reshape((n, -1) + x.shape[1:]), y.reshape(n, -1))
    updates, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def eval_step(params, marcs_M, images, labels, idx_B, valid_B):
    x, y = images[idx_B], labels[idx_B]
    if len(devices) > 1 and marcs_M.connections.shape[0] % len(devices) == 0:
      return split(params, marcs_M, x, y, valid_B)
    return correct(params, marcs_M, x, y, valid_B)

  opts = trainer.conv_compiler_options(cfg.fast_compile)
  return Programs(jax.jit(train_step, donate_argnums=(0, 1), compiler_options=opts),
                  jax.jit(eval_step, compiler_options=opts))


def encode(net: MaskedCNN, archs: Sequence[CNNArch]) -> MaskedArch:
  """The stacked masks of ``archs`` (numpy, leading axis len(archs))."""
  return stack_archs([net.encode(a) for a in archs])


def eval_batches(n: int, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """(idx_B, valid_B) covering ``n`` examples once, every batch ``min(batch_size, n)`` distinct
  examples (the last one overlaps the one before, its repeats not counted): batch statistics are
  then always those of a real batch."""
  bs = min(batch_size, n)
  out = []
  for start in range(0, n, bs):
    first = min(start, n - bs)
    idx = np.arange(first, first + bs)
    out.append((idx, idx >= start))
  return out


def accuracy(progs: Programs, params, marcs_M: MaskedArch, images, labels,
             batch_size: int, place=lambda t: t) -> np.ndarray:
  """Accuracy_M of M children on all of ``images`` (batches of :func:`eval_batches`; ``place``:
  where the batches' indices go, :class:`nas_jax.training.shared.Placement`)."""
  correct = 0
  for idx, valid in eval_batches(images.shape[0], batch_size):
    correct = correct + np.asarray(progs.eval_step(params, marcs_M, images, labels,
                                                   *place((idx, valid))))
  return np.asarray(correct) / images.shape[0]


def exact_variables(net: MaskedCNN, arch: CNNArch, params: dict,
                    batch_stats: dict | None = None) -> dict:
  """The variables of the exact ``CNNChild(arch)`` that the shared ``params`` (and running
  ``batch_stats``; default 0 and 1) hold for it: the inverse of
  ``MaskedCNN.embed_exact_variables``."""
  from nas_jax.spaces.cnn import CNNChild  # pylint: disable=import-outside-toplevel
  shapes = jax.eval_shape(CNNChild(arch, net.num_classes).init, jax.random.key(0),
                          jnp.zeros((1,) + net.image_shape))
  KH, KW = net.max_kernel
  c_img, F, convs = net.image_shape[2], net.max_filters, net.space.convs_per_layer
  p = jax.tree.map(np.asarray, params)
  stats = jax.tree.map(np.asarray, batch_stats or batch_stats_placeholder(net))
  out = {"params": {}, "batch_stats": {}}
  for i, layer in enumerate(arch.layers):
    fh, fw, nf = layer.filter_height, layer.filter_width, layer.num_filters
    oh, ow = (KH - fh) // 2, (KW - fw) // 2
    srcs = net._geometry.sources[i]  # pylint: disable=protected-access
    starts = np.cumsum([0] + [c_img if s == 0 else F for s in srcs])
    for c in range(convs):
      k = i * convs + c
      src = p[f"Conv_{k}"]["kernel"][oh:oh + fh, ow:ow + fw]
      if c == 0:
        rows = []
        for col in ([j + 1 for j in layer.inputs] if layer.inputs else [0]):
          n_in = c_img if col == 0 else arch.layers[col - 1].num_filters
          row = starts[srcs.index(col)]
          rows.append(src[:, :, row:row + n_in, :nf])
        kernel = np.concatenate(rows, axis=2)
      else:
        kernel = src[:, :, :nf, :nf]
      out["params"][f"Conv_{k}"] = {"kernel": kernel}
      out["params"][f"BatchNorm_{k}"] = {n: p[f"BatchNorm_{k}"][n][:nf] for n in ("scale", "bias")}
      out["batch_stats"][f"BatchNorm_{k}"] = {n: stats[f"BatchNorm_{k}"][n][:nf]
                                              for n in ("mean", "var")}
  dense = [p["Dense_0"]["kernel"][l * F:l * F + arch.layers[l].num_filters]
           for l in arch.unconsumed()]
  out["params"]["Dense_0"] = {"kernel": np.concatenate(dense, 0), "bias": p["Dense_0"]["bias"]}
  got = [a.shape for a in jax.tree.leaves(out)]
  want = [s.shape for s in jax.tree.leaves(shapes)]
  if jax.tree.structure(out) != jax.tree.structure(shapes) or got != want:
    raise ValueError(f"exact_variables: {got} do not match CNNChild's {want}")
  return out


class Executor:
  """The CNN space's executor (:class:`nas_jax.training.shared.Executor`): the shared masked
  network of this module (values: validation accuracies)."""

  metric = base.ACCURACY

  def __init__(self, settings: shared_lib.Settings, space, dataset, keys: dict):
    sh = settings.shared
    self.sh, self.keys = sh, keys
    self.num_layers = space.num_layers(0)
    image_shape = tuple(int(d) for d in dataset.train_images.shape[1:])
    self.net = MaskedCNN(space, self.num_layers, image_shape, dataset.num_classes)
    self.image_channels, self.num_classes = image_shape[2], dataset.num_classes
    n, per = dataset.train_images.shape[0], sh.children_per_batch
    self.bs = min(sh.batch_size, n // per * per)   # split evenly among the batch's children
    if not self.bs:
      raise ConfigError(f"config.shared.children_per_batch: {per} architectures per minibatch, "
                        f"but only {n} training examples; lower it")
    self.steps_per_epoch = n // self.bs
    self.train_steps = sh.train_steps or self.steps_per_epoch
    total = sh.epochs * self.train_steps
    self.place = shared_lib.Placement(shared_lib.devices(sh))
    self.devices = self.place.devices
    self.progs = programs(self.net, sh, bool(dataset.augment), self.steps_per_epoch,
                          total, self.devices)
    self.tx = optim.shared_optimizer(sh, self.steps_per_epoch, total)
    self.train_x, self.train_y, self.val_x, self.val_y, self.aug_key = self.place(
        (jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels),
         jnp.asarray(dataset.val_images), jnp.asarray(dataset.val_labels), keys["aug"]))
    self.eval_bs = min(sh.eval_batch_size, self.val_x.shape[0])
    self._perm = (None, None)

  def init(self) -> dict:
    params = init(self.net, self.keys["weights"])
    return {"params": params, "opt_state": self.tx.init(params)}

  def _train_indices(self, g: int) -> np.ndarray:
    epoch, b = divmod(g, self.steps_per_epoch)
    if self._perm[0] != epoch:
      rng = trainer.host_rng(jax.random.fold_in(self.keys["data"], epoch))
      self._perm = (epoch, rng.permutation(self.train_x.shape[0]))
    return self._perm[1][b * self.bs:(b + 1) * self.bs]

  def _val_indices(self, j: int) -> np.ndarray:
    rng = trainer.host_rng(jax.random.fold_in(self.keys["val"], j))
    return rng.permutation(self.val_x.shape[0])[:self.eval_bs]

  def train_step(self, ws: dict, archs, g: int):
    marcs, idx = self.place((encode(self.net, archs), self._train_indices(g)))
    params, opt_state, loss = self.progs.train_step(
        ws["params"], ws["opt_state"], marcs, self.train_x, self.train_y, idx, self.aug_key, g)
    return {**ws, "params": params, "opt_state": opt_state}, loss

  def loss_fields(self, losses: list, phase: int) -> dict:
    train_loss = float(np.mean(np.asarray(losses))) if losses else float("nan")
    if losses and not np.isfinite(train_loss):
      raise FloatingPointError(f"the shared weights' training loss became {train_loss} in epoch "
                               f"{phase}; lower config.shared.learning_rate or set "
                               "config.shared.grad_clip")
    return {"train_loss": train_loss}

  def score(self, ws: dict, archs, j: int) -> np.ndarray:
    idx = self._val_indices(j)
    marcs, idx, valid = self.place((encode(self.net, archs), idx, np.ones(len(idx), bool)))
    correct = self.progs.eval_step(ws["params"], marcs, self.val_x, self.val_y, idx, valid)
    return np.asarray(correct) / len(idx)

  def score_all(self, ws: dict, archs) -> np.ndarray:
    return accuracy(self.progs, ws["params"], self.place(encode(self.net, archs)),
                    self.val_x, self.val_y, self.eval_bs, self.place)

  def reward(self, acc: float) -> float:
    return float(acc) ** self.sh.reward_power

  def error(self, acc: float) -> str:
    del acc
    return ""

  def fields(self, arch, acc: float) -> dict:
    return {"val_accuracy": float(acc), "val_accuracies": [float(acc)],
            "param_count": exact_param_count(arch, self.image_channels, self.num_classes)}
