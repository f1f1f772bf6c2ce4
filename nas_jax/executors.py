"""Child executors: how the children of one controller step are trained, chosen by the config.

An executor is ``(space, archs, dataset, keys) -> iterable of ChildResult`` (in order, so the
search loop can record each child as soon as it is done):

* ``exact`` (CNN spaces): each child compiled at its exact shapes and cached (``nas_jax.child``);
  with several local devices (``config.child.num_devices``: 0 = all) the children of a step are
  spread over them, one Python thread per device dispatching its children asynchronously (JAX
  releases the GIL while a device computes), and the results come back in order;
* ``vmap`` (CNN spaces, ``config.child.executor="vmap"``): the m children of a step trained
  together in one program over a masked max-size network (``nas_jax.masked_cnn``), compiled once
  per depth; on one device;
* cell spaces: all m language models of a step in one vmapped program
  (``nas_jax.cell_children``; ``config.lm_child.vmap=False`` trains them one after another).
"""

from __future__ import annotations

import concurrent.futures

import jax
from absl import logging

from nas_jax import cell_children, child, config as config_lib, data as data_lib, masked_cnn, ptb


def load_data(cfg):
  """The dataset ``cfg.data`` names: an image Dataset, or a PTB Corpus."""
  d = cfg.data
  if d.name == "ptb":
    return ptb.load_ptb(d.level, d.data_dir or None)
  return data_lib.load_dataset(d.name, d.data_dir or None, num_validation=d.num_validation or None,
                               max_train=d.max_train or None, seed=cfg.seed)


def make_evaluator(cfg):
  """The executor for ``cfg`` (see the module docstring)."""
  if cfg.search_space.name == "rnn_cell":
    lm_cfg = config_lib.lm_child_config(cfg)

    def evaluate_cells(space, archs, corpus, keys):
      if not archs:
        return []
      return cell_children.evaluate_cells(space, archs, corpus, lm_cfg, keys,
                                           reward_constant=float(cfg.lm_child.reward_constant),
                                           vmap=cfg.lm_child.vmap)
    return evaluate_cells

  train_cfg = config_lib.train_config(cfg)
  log_fn = logging.info if cfg.search.verbose else None
  on_device = {}  # (id(dataset), device) -> the dataset's arrays there, copied once per search

  def placed(dataset, device):
    if (id(dataset), device) not in on_device:
      if any(k[0] != id(dataset) for k in on_device):
        on_device.clear()
      on_device[(id(dataset), device)] = dataset._replace(**{
          f: jax.device_put(getattr(dataset, f), device) for f in dataset._fields
          if f.endswith(("_images", "_labels"))})
    return on_device[(id(dataset), device)]

  if cfg.child.executor == "vmap":
    def evaluate_vmap(space, archs, dataset, keys):
      if not archs:
        return []
      return masked_cnn.evaluate_masked(space, archs, placed(dataset, jax.local_devices()[0]),
                                        train_cfg, keys, log_fn=log_fn)
    return evaluate_vmap
  devices = local_devices(cfg.child.num_devices)
  pool = (concurrent.futures.ThreadPoolExecutor(len(devices), thread_name_prefix="child")
          if len(devices) > 1 else None)

  def evaluate_exact(space, archs, dataset, keys):
    jobs = [(space.build(arch, dataset.num_classes), placed(dataset, devices[k % len(devices)]),
             key) for k, (arch, key) in enumerate(zip(archs, keys))]
    if pool is None:
      for model, data, key in jobs:
        yield child.evaluate(model, data, train_cfg, key, log_fn=log_fn)
      return
    futures = [pool.submit(child.evaluate, model, data, train_cfg, key, log_fn=log_fn)
               for model, data, key in jobs]
    try:
      for k, f in enumerate(futures):  # in order, so the search records each child at once
        r = f.result()
        yield r._replace(metrics={**(r.metrics or {}), "device": str(devices[k % len(devices)])})
    finally:  # the search stopped early (error, Ctrl-C): don't start the step's other children
      for f in futures:
        f.cancel()
  return evaluate_exact


def local_devices(num_devices: int = 0) -> list:
  """The first ``num_devices`` local devices (0: all of them)."""
  devices = jax.local_devices()
  if num_devices > len(devices):
    raise config_lib.ConfigError(
        f"config.child.num_devices: {num_devices} asked for, this process has {len(devices)} "
        f"({devices[0].platform}); use 0 for all of them")
  return devices[:num_devices or len(devices)]
