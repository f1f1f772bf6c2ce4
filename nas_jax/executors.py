"""Child executors: how the children of one controller step are trained, chosen by the config.

An executor is ``(space, archs, dataset, keys) -> iterable of ChildResult`` (in order, so the
search loop can record each child as soon as it is done):

* ``exact`` (CNN spaces): one child at a time, each compiled at its exact shapes and cached
  (``nas_jax.child``);
* cell spaces: all m language models of a step in one vmapped program
  (``nas_jax.cell_children``; ``config.lm_child.vmap=False`` trains them one after another).
"""

from __future__ import annotations

import jax
from absl import logging

from nas_jax import cell_children, child, config as config_lib, data as data_lib, ptb


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
  on_device = {}  # id(dataset) -> the dataset's arrays on the device, copied once per search

  def evaluate_exact(space, archs, dataset, keys):
    if id(dataset) not in on_device:
      on_device.clear()
      on_device[id(dataset)] = dataset._replace(**{
          f: jax.device_put(getattr(dataset, f)) for f in dataset._fields
          if f.endswith(("_images", "_labels"))})
    dataset = on_device[id(dataset)]
    for arch, key in zip(archs, keys):
      yield child.evaluate(space.build(arch, dataset.num_classes), dataset, train_cfg, key,
                           log_fn=log_fn)
  return evaluate_exact
