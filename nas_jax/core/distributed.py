"""One search over many processes (hosts), on JAX's own multi-controller runtime.

Every process runs the same search loop with the same seed, so every process samples the same
architectures from the same controller. Child ``k`` of a step is trained by process
``k % process_count`` (on that process's local devices); each process publishes the rows of its
children in the coordination service's key-value store and reads everyone else's, so every process
sees all rewards and applies the same controller update: all hold identical controller state.
Only process 0 reads and writes the workdir (history, checkpoints, summary); at start it sends the
restored searcher state to the others.

A process that dies is noticed by the coordination service's heartbeats
(``heartbeat_timeout_s``) and JAX aborts the survivors instead of letting them wait for ever;
``experiments/search.py`` runs each process under :mod:`nas_jax.core.supervisor`, which turns that
abort into one line and exit code ``PEER_LOST_EXIT_CODE``. A peer's missing result is also reported
by :meth:`Cluster.fetch` after ``timeout_s``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time

import flax.serialization
import jax
import numpy as np

from nas_jax.core.supervisor import PEER_LOST_EXIT_CODE  # noqa: F401  (re-exported)
from nas_jax.errors import DistributedError  # noqa: F401  (public here too)
from nas_jax.spaces import base
from nas_jax.training import trainer


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, heartbeat_timeout_s: int = 100,
               initialization_timeout_s: int = 300) -> None:
  """``jax.distributed.initialize`` plus a warm-up collective.

  With no arguments JAX detects the cluster (TPU pods, Slurm, ...). The warm-up makes every process
  take part in one collective right away: on CPU, gloo creates its context at the first
  collective and kills every process if they reach it more than ~30 s apart.
  """
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             initialization_timeout=initialization_timeout_s,
                             heartbeat_timeout_seconds=heartbeat_timeout_s)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  multihost_utils.process_allgather(np.zeros((1,), np.int32))


CHUNK_BYTES = 1 << 20


@dataclasses.dataclass
class Cluster:
  """This process's place in the search: index, count, and the key-value store between them."""
  index: int = 0
  count: int = 1
  prefix: str = "nas_jax/run1"

  @property
  def is_primary(self) -> bool:
    return self.index == 0

  def _client(self):
    from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
    client = jax_distributed.global_state.client
    if client is None:
      raise DistributedError("jax.distributed is not initialised; call nas_jax.core.distributed."
                             "initialize() first")
    return client

  def publish(self, key: str, value: bytes) -> None:
    """Stores ``value`` under ``key`` for the other processes, in chunks of ``CHUNK_BYTES`` (gRPC
    refuses large messages); the first chunk, written last, says how many there are."""
    client = self._client()
    chunks = [value[i:i + CHUNK_BYTES] for i in range(0, len(value), CHUNK_BYTES)] or [b""]
    for i, chunk in enumerate(chunks[1:], 1):
      client.key_value_set_bytes(f"{self.prefix}/{key}#{i}", chunk)
    head = len(chunks).to_bytes(4, "little") + chunks[0]
    client.key_value_set_bytes(f"{self.prefix}/{key}", head)

  def fetch(self, key: str, timeout_s: float, poll_s: float = 2.0) -> bytes:
    """The value another process published under ``key``; waits up to ``timeout_s``.

    Raises:
      DistributedError: a process aborted (its error is in the message), or the time ran out.
    """
    client = self._client()
    deadline = time.monotonic() + timeout_s
    while True:
      wait = max(0.0, min(poll_s, deadline - time.monotonic()))
      t0 = time.monotonic()
      try:
        head = client.blocking_key_value_get_bytes(f"{self.prefix}/{key}", int(wait * 1000) + 1)
        count = int.from_bytes(head[:4], "little")
        return head[4:] + b"".join(client.blocking_key_value_get_bytes(
            f"{self.prefix}/{key}#{i}", 60_000) for i in range(1, count))
      except Exception:  # pylint: disable=broad-except  (XlaRuntimeError: DEADLINE_EXCEEDED)
        if time.monotonic() - t0 < wait / 2:  # failed at once (coordinator gone?): don't spin
          time.sleep(wait / 2)
      reason = self._try_get(client, "abort")
      if reason is not None:
        raise DistributedError(reason.decode(errors="replace"))
      if time.monotonic() >= deadline:
        raise DistributedError(f"no value for {key!r} from the other processes within "
                               f"{timeout_s:.0f} s (search.gather_timeout_s); a process may have "
                               "died or hung; see its log")

  def share_start(self, start: int, state, rows: list[dict], digest: str, timeout_s: float):
    """Where the search starts, as process 0 restored it: ``(step, searcher state, rows)``.

    Every process then holds the whole history, so all reuse the same rows and agree on the best.
    A process whose config (``digest``) differs from process 0's raises DistributedError.
    """
    if self.count == 1:
      return start, state, rows
    if self.is_primary:
      self.publish("start/state", flax.serialization.to_bytes(state))
      self.publish("start/info", json.dumps(
          {"start": start, "rows": rows, "config": digest}).encode())
    state = flax.serialization.from_bytes(state, self.fetch("start/state", timeout_s))
    info = json.loads(self.fetch("start/info", timeout_s))
    if info["config"] != digest:
      raise DistributedError(
          f"process {self.index} runs another config than process 0 (config hash "
          f"{digest[:12]} vs {info['config'][:12]}); give every process the same config and flags")
    return info["start"], state, info["rows"]

  def shared(self, evaluator, timeout_s: float):
    """``evaluator`` shared out: ``(step, indices, space, archs, data, keys) -> results``.

    This process evaluates the children whose index ``k % count == index`` and publishes their
    results; the others' come from the key-value store. Every process gets every result, in
    order (with one process: the evaluator's own results, as they come).
    """
    calls = itertools.count()

    def evaluate(step, indices, space, archs, data, keys):
      if self.count == 1:
        yield from evaluator(space, archs, data, keys)
        return
      call = next(calls)
      mine = [i for i, k in enumerate(indices) if k % self.count == self.index]
      results = {}
      for i, res in zip(mine, evaluator(space, [archs[i] for i in mine], data,
                                        [keys[i] for i in mine])):
        results[i] = res
        self.publish(f"{call}/{indices[i]}", json.dumps(
            {"arch": base.to_json(archs[i]), **res._asdict()}).encode())
      for i, k in enumerate(indices):
        if i not in results:
          got = json.loads(self.fetch(f"{call}/{k}", timeout_s))
          if got.pop("arch") != json.loads(json.dumps(base.to_json(archs[i]))):
            raise DistributedError(
                f"child {step}.{k} of another process is another architecture than this process "
                "sampled: the processes' controllers differ (same config and seed everywhere?)")
          results[i] = trainer.ChildResult(**got)
        yield results[i]
    return evaluate

  def abort(self, reason: str) -> None:
    """Tells the other processes to stop (they raise DistributedError with ``reason``)."""
    if self.count == 1:
      return
    try:
      self._client().key_value_set_bytes(f"{self.prefix}/abort", reason.encode()[:4000])
    except Exception:  # pylint: disable=broad-except  (already aborted by another process)
      pass

  def _try_get(self, client, key: str) -> bytes | None:
    try:
      return client.key_value_try_get_bytes(f"{self.prefix}/{key}")
    except Exception:  # pylint: disable=broad-except  (NOT_FOUND)
      return None


_runs = 0


def current() -> Cluster:
  """The cluster this process belongs to (one process unless jax.distributed is initialised).

  Each call starts a new key namespace (``nas_jax/run<n>``): the processes of a job run the same
  sequence of searches, so the n-th search of every process shares keys with no earlier one.
  """
  global _runs
  _runs += 1
  return Cluster(jax.process_index(), jax.process_count(), f"nas_jax/run{_runs}")
