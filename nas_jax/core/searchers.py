"""Searchers: what proposes architectures and learns from their rewards.

Every searcher has one interface, so the paper's random-search comparison is one config field
(``config.search.searcher``, a name of :data:`SEARCHERS`):

* ``init(key, decisions) -> state`` (a pytree; checkpointed as is),
* ``propose(state, key, plan, decisions, m) -> (tokens_MxT, info)``,
* ``feedback(state, tokens_MxT, rewards_M, plan, decisions) -> (state, metrics)``.

``ReinforceSearcher`` is the LSTM controller trained by REINFORCE; ``RandomSearcher`` draws every
choice uniformly and every skip connection with probability 1/2, and learns nothing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from nas_jax.core import controller, reinforce
from nas_jax.spaces import base
from nas_jax.spaces.base import CHOICE


@dataclasses.dataclass(frozen=True)
class ReinforceSearcher:
  cfg: reinforce.ReinforceConfig = reinforce.ReinforceConfig()
  name: str = "reinforce"

  def init(self, key, decisions):
    return reinforce.init_state(key, decisions, self.cfg)

  def propose(self, state, key, plan, decisions, m):
    tokens, logp, ent = controller.sample(state.params, key, plan=plan, decisions=decisions,
                                          cfg=self.cfg.controller, m=m)
    return np.asarray(tokens), {"entropy": float(jnp.mean(ent)), "log_prob": float(jnp.mean(logp))}

  def feedback(self, state, tokens, rewards, plan, decisions):
    # A user's evaluator or searcher loop that drops a child would silently misalign rewards.
    chex.assert_shape(rewards, (len(tokens),))
    chex.assert_shape(tokens, (len(tokens), base.num_tokens(plan)))
    state, metrics = reinforce.update(state, jnp.asarray(tokens), jnp.asarray(rewards, jnp.float32),
                                      plan=plan, decisions=decisions, cfg=self.cfg)
    return state, {k: float(v) for k, v in metrics.items()}


@dataclasses.dataclass(frozen=True)
class RandomSearcher:
  name: str = "random"

  def init(self, key, decisions):
    del key, decisions
    return {"step": jnp.zeros((), jnp.int32)}

  def propose(self, state, key, plan, decisions, m):
    del state
    cols, entropy = [], 0.0
    for i, s in enumerate(plan):
      k = jax.random.fold_in(key, i)
      if s.kind == CHOICE:
        n = decisions[s.decision].num_choices
        cols.append(jax.random.randint(k, (m, 1), 0, n))
        entropy += math.log(n)
      elif s.layer:
        cols.append(jax.random.bernoulli(k, 0.5, (m, s.layer)).astype(jnp.int32))
        entropy += s.layer * math.log(2)
    tokens = np.concatenate([np.asarray(c, np.int32) for c in cols], axis=1) if cols else (
        np.zeros((m, 0), np.int32))
    if base.is_gated(plan):   # masked steps: tokens 0, no entropy (as the controller gives them)
      tokens, entropy = _mask_gated(tokens, plan, decisions)
    return tokens, {"entropy": entropy}

  def feedback(self, state, tokens, rewards, plan, decisions):
    del tokens, rewards, plan, decisions
    return {"step": state["step"] + 1}, {}


def _mask_gated(tokens_MxT, plan, decisions):
  """Zeroes the tokens of each sample's masked steps; the mean entropy of its active steps."""
  step_entropy = np.array([math.log(decisions[s.decision].num_choices) if s.kind == CHOICE
                           else s.layer * math.log(2) for s in plan])
  on_MxS = np.stack([base.active_steps(plan, t) for t in tokens_MxT])
  on_MxT = np.stack([base.active_tokens(plan, t) for t in tokens_MxT])
  return (np.where(on_MxT, tokens_MxT, 0).astype(np.int32),
          float(np.mean(on_MxS @ step_entropy)))


SEARCHERS: dict[str, Callable[[reinforce.ReinforceConfig], Any]] = {
    "reinforce": ReinforceSearcher,
    "random": lambda cfg: RandomSearcher(),
}
"""``config.search.searcher`` -> a factory ``(config.controller) -> searcher``: the one list the
config is validated against. A searcher of one's own is registered here (:func:`register`), or
passed as an object: ``run_search(cfg, workdir, searcher=MySearcher())``."""


def register(name: str, factory: Callable[[reinforce.ReinforceConfig], Any]) -> None:
  """Makes ``config.search.searcher=name`` build ``factory(config.controller)``."""
  SEARCHERS[name] = factory


def make_searcher(name: str, cfg: reinforce.ReinforceConfig):
  if name not in SEARCHERS:
    raise ValueError(f"config.search.searcher: unknown searcher {name!r}; one of "
                     f"{sorted(SEARCHERS)}")
  return SEARCHERS[name](cfg)
