"""The search-space interface: a value that names the decisions, plus pure functions.

A search space tells the controller *what to emit* and the child trainer *what to build*:

* ``decisions``: the decision types, each a softmax head of the controller
  (e.g. filter height with 4 choices). Controller parameters depend only on these.
* ``plan(num_layers)``: the token program for one architecture at a given depth: a tuple of
  :class:`Step` s, each a categorical choice or an *anchor point* (the paper's skip-connection
  step, which emits one Bernoulli per previous anchor).
* ``num_layers(num_sampled)``: the depth schedule (how many layers after ``num_sampled``
  architectures have been sampled).
* ``decode(plan, tokens_T)``: flat tokens -> a hashable, JSON-friendly architecture spec.
* ``build(arch, num_classes)``: a Flax module for the child; ``init``/``apply`` are the module's.

The search loop sees nothing else, so a new space is one new module (see ``tests/toy_space.py``).

Token layout (``tokens_T``, int32): the plan's steps in order; a choice step contributes one token
(its choice index), an anchor step at layer ``i`` contributes ``i`` bits (is layer ``j < i`` an
input of layer ``i``?). A plan with anchors has one per layer, in order: the k-th anchor step is at
layer k (the controller raises ValueError otherwise).

Decisions that shorten the plan (depth, or any count): a step may be *gated* by an earlier choice
step (:func:`gated`): it is active only where that step is active and its token is at least
``gate_min``. A plan keeps its fixed length (one compiled controller serves every depth); an
inactive step is skipped by the controller: it adds nothing to the log-probability or the entropy
(so REINFORCE gives it exactly no gradient), does not change what later steps see, and its tokens
are 0. ``decode`` receives all the tokens and decodes the active ones (:func:`active_steps`). E.g.
a depth of 1 to 4 layers: a ``depth`` decision with 4 choices first, then layer ``l``'s steps
``gated(choice(d), by=0, at_least=l)``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, Hashable, NamedTuple, Sequence

import numpy as np


class Decision(NamedTuple):
  """A decision type: one softmax head of the controller."""
  name: str
  num_choices: int


class Step(NamedTuple):
  """One controller step. ``kind`` is "choice" (uses ``decision``) or "anchor" (uses ``layer``).

  ``gate`` (-1: none) is the plan index of an earlier choice step; the step is active only where
  that step is active and its token is >= ``gate_min`` (see :func:`gated`).
  """
  kind: str
  decision: int = -1
  layer: int = -1
  gate: int = -1
  gate_min: int = 0


CHOICE = "choice"
ANCHOR = "anchor"


def choice(decision: int) -> Step:
  return Step(CHOICE, decision=decision)


def anchor(layer: int) -> Step:
  return Step(ANCHOR, layer=layer)


def gated(step: Step, by: int, at_least: int) -> Step:
  """``step``, active only where the choice step at plan index ``by`` is active and its token is
  ``>= at_least`` (e.g. layer ``l`` of a plan whose step ``by`` chooses the depth ``token + 1``:
  ``at_least=l``)."""
  return step._replace(gate=by, gate_min=at_least)


def is_gated(plan: Sequence[Step]) -> bool:
  """Does any step of ``plan`` depend on a count token (:func:`gated`)?"""
  return any(s.gate >= 0 for s in plan)


def check_gates(plan: Sequence[Step]) -> None:
  """Raises ValueError unless every gate names an earlier choice step."""
  for i, s in enumerate(plan):
    if s.gate >= 0 and not (s.gate < i and plan[s.gate].kind == CHOICE):
      raise ValueError(f"plan: step {i} is gated by step {s.gate}, which is not an earlier "
                       "choice step")


def active_steps(plan: Sequence[Step], tokens_T) -> np.ndarray:
  """Which steps of ``plan`` the tokens make active (bool, one per step): the controller's rule.

  All steps are active in a plan without gates.
  """
  check_gates(plan)
  values = split_tokens(plan, tokens_T)
  on = np.ones(len(plan), bool)
  for i, s in enumerate(plan):
    if s.gate >= 0:
      on[i] = on[s.gate] and values[s.gate] >= s.gate_min
  return on


def active_tokens(plan: Sequence[Step], tokens_T) -> np.ndarray:
  """Which tokens belong to active steps (bool, one per token; see :func:`active_steps`)."""
  step_of = np.repeat(np.arange(len(plan)), [1 if s.kind == CHOICE else s.layer for s in plan])
  return active_steps(plan, tokens_T)[step_of]


def num_tokens(plan: Sequence[Step]) -> int:
  """Length of the flat token vector of ``plan``."""
  return sum(1 if s.kind == CHOICE else s.layer for s in plan)


def split_tokens(plan: Sequence[Step], tokens_T) -> list[Any]:
  """Flat tokens -> one entry per step: an int for a choice, a tuple of bits for an anchor."""
  tokens_T = np.asarray(tokens_T)
  if tokens_T.shape != (num_tokens(plan),):
    raise ValueError(f"tokens have shape {tokens_T.shape}, the plan needs ({num_tokens(plan)},)")
  out, pos = [], 0
  for s in plan:
    if s.kind == CHOICE:
      out.append(int(tokens_T[pos]))
      pos += 1
    else:
      out.append(tuple(int(b) for b in tokens_T[pos:pos + s.layer]))
      pos += s.layer
  return out


class Metric(NamedTuple):
  """The value of a history row that ranks children (the reward is computed from it)."""
  name: str
  higher_is_better: bool


ACCURACY = Metric("val_accuracy", True)
PERPLEXITY = Metric("val_ppl", False)


class SearchSpace:
  """Base class of search spaces; subclasses are frozen dataclasses (hashable values)."""

  name: str = "base"
  data_names: ClassVar[tuple[str, ...]] = ()  # the datasets its children train on (() = any)

  @property
  def decisions(self) -> tuple[Decision, ...]:
    raise NotImplementedError

  def num_layers(self, num_sampled: int) -> int:
    raise NotImplementedError

  def plan(self, num_layers: int) -> tuple[Step, ...]:
    raise NotImplementedError

  def decode(self, plan: Sequence[Step], tokens_T) -> Hashable:
    raise NotImplementedError

  def build(self, arch: Hashable, num_classes: int):
    """The child network of ``arch``: a hashable Flax module taking ``(images, train=bool)``.

    A module whose every variable comes from the default initialiser of Flax's ``nn.Conv``,
    ``nn.Dense`` or ``nn.BatchNorm`` may set the class attribute ``default_initializers = True``
    (as ``CNNChild`` does): the ``exact`` executor then draws them on the host
    (``nas_jax.training.child.host_init``) instead of compiling an init program per architecture.

    Stochastic layers: in training the module is applied with a fresh key per step for the PRNG
    stream ``"dropout"`` (``nn.Dropout(rate, deterministic=not train)`` works as it is) and for
    every stream its class attribute ``rng_collections`` names (e.g. ``("noise",)``); evaluation
    is deterministic (``train=False``, no streams).
    """
    raise NotImplementedError

  def describe(self, arch: Hashable) -> str:
    """A one-line human-readable form of ``arch`` (for logs)."""
    return json.dumps(to_json(arch))

  def check_config(self, config) -> None:
    """Raises ``nas_jax.errors.ConfigError`` where ``config`` (the parsed
    :class:`nas_jax.config.Config`) cannot search this space; the default accepts any."""

  def evaluator(self, config):
    """The evaluator this space brings, or None (the default) for the library's.

    An evaluator is ``(space, archs, data, keys) -> iterable of ChildResult`` with a ``metric``
    attribute (``nas_jax.training.evaluators.Evaluator``); ``config`` is the search's parsed
    config. With None, the experiment assembly (``nas_jax.experiment``) picks the one its table
    holds for this space's type; a space it does not know has what ``build`` returns trained as an
    image classifier, each child compiled at its exact shapes (``config.child.executor="exact"``).
    """
    del config
    return None

  def from_json(self, obj: Any) -> Hashable:
    """The inverse of :func:`to_json`: ``arch`` from its JSON form (a history row's ``arch``).

    Reports use it to turn a row back into an architecture; the default raises
    NotImplementedError (a space without it is reported without a diagram).

    Raises:
      ValueError: ``obj`` is not the JSON form of an architecture of this space.
    """
    raise NotImplementedError(f"{type(self).__name__} has no from_json")

  def diagram(self, arch: Hashable, title: str = ""):
    """A :class:`matplotlib.figure.Figure` of ``arch``; None (the default): no diagram.

    Spaces import matplotlib inside this method only, so importing a space stays light.
    """
    del arch, title
    return None


def to_json(arch: Any) -> Any:
  """Architecture spec (nested NamedTuples / tuples / dataclasses) -> JSON-serialisable object."""
  if hasattr(arch, "_asdict"):
    return {k: to_json(v) for k, v in arch._asdict().items()}
  if dataclasses.is_dataclass(arch) and not isinstance(arch, type):
    return {f.name: to_json(getattr(arch, f.name)) for f in dataclasses.fields(arch)}
  if isinstance(arch, (tuple, list)):
    return [to_json(a) for a in arch]
  if isinstance(arch, np.generic):
    return arch.item()
  return arch
