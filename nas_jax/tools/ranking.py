"""Ranking quality: how well one score orders architectures the way another does.

The field's measure of a weight-sharing search (Sciuto et al. 2019; Yu et al. 2020) is the rank
correlation between the architectures' scores under the shared weights and their scores trained
alone; its ceiling is the same correlation between two stand-alone trainings of different seeds.
Kendall's tau (pairs ordered alike minus pairs ordered apart, ties as in tau-b) and Spearman's rho
(the correlation of the ranks), each with a percentile bootstrap interval over architectures.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import numpy as np


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
  """Kendall's tau-b of the paired values (NaN with fewer than 2 pairs or a constant side)."""
  from scipy import stats  # pylint: disable=import-outside-toplevel  # comes with scikit-learn
  if len(x) < 2:
    return float("nan")
  return float(stats.kendalltau(x, y).statistic)


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
  """Spearman's rank correlation of the paired values (NaN with fewer than 2 pairs)."""
  from scipy import stats  # pylint: disable=import-outside-toplevel
  if len(x) < 2:
    return float("nan")
  return float(stats.spearmanr(x, y).statistic)


def bootstrap(x: Sequence[float], y: Sequence[float], statistic: Callable, *, n: int = 2000,
              confidence: float = 0.95, seed: int = 0) -> dict:
  """``{"value", "lo", "hi", "n"}``: ``statistic(x, y)`` and its percentile bootstrap interval
  (``n`` resamples of the pairs with replacement; resamples where it is undefined skipped)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  rng = np.random.default_rng(seed)
  draws = []
  with warnings.catch_warnings():  # a resample with one distinct value has no correlation
    warnings.simplefilter("ignore")
    for _ in range(n):
      idx = rng.integers(0, len(x), len(x))
      v = statistic(x[idx], y[idx])
      if math.isfinite(v):
        draws.append(v)
  alpha = (1 - confidence) / 2
  lo, hi = (float(np.quantile(draws, q)) for q in (alpha, 1 - alpha)) if draws else (None, None)
  return {"value": statistic(x, y), "lo": lo, "hi": hi, "n": len(x)}


def correlations(x: Sequence[float], y: Sequence[float], seed: int = 0) -> dict:
  """Kendall's tau and Spearman's rho of the pairs, each with its bootstrap interval."""
  return {"kendall_tau": bootstrap(x, y, kendall_tau, seed=seed),
          "spearman_rho": bootstrap(x, y, spearman_rho, seed=seed)}


SPACES = {"digits": ("cnn_digits_shared", "cnn_digits"),
          "ptb": ("rnn_ptb_shared_cpu", "rnn_ptb_cpu"),
          "enas": ("rnn_ptb_enas_shared_cpu", "rnn_ptb_enas_cpu")}
"""--space -> (the weight-sharing config, the exact search's config: the stand-alone budget)."""


def standalone_config(space_name: str, quick: bool = False):
  """The parsed config of the exact search whose child budget the architectures are trained
  alone at (the shared PTB searches read the whole training text; their exact searches train
  each child on 80,000 characters)."""
  from nas_jax import config as config_lib, configs  # pylint: disable=import-outside-toplevel
  return config_lib.parse(configs.get_config(SPACES[space_name][1], "quick" if quick else None))
