"""The library's exceptions: a leaf module every layer may import (it imports nothing of nas_jax).

Each message names the field, file or flag at fault and the fix. Callers tell failures apart by
these types, never by matching message text.
"""

from __future__ import annotations


class ConfigError(ValueError):
  """A bad config value; the message names the field and how to fix it."""


class InputError(ValueError):
  """Bad input (a flag, the search workdir, the output directory); the message names the fix."""


class WorkdirError(RuntimeError):
  """The workdir cannot be used as it is; the message names the path, the cause and the fix."""


class WorkdirMismatchError(WorkdirError):
  """The workdir holds a run with a different config."""


class ChildrenFailError(RuntimeError):
  """Every child raised an exception: the search space or the data is broken."""


class DistributedError(RuntimeError):
  """A peer process did not deliver its part of the search in time (it may have died)."""


class CompareError(ValueError):
  """Workdirs that cannot be compared (metrics or budgets differ, a history is missing)."""


class DataUnavailableError(RuntimeError):
  """The requested dataset is not on this machine; the message says how to get it."""


class NotCifarBatchError(DataUnavailableError):
  """A file named like a CIFAR-10 python batch holds something else (it is never executed)."""


# A child whose loss became NaN or inf *diverged*: a legitimate outcome (reward 0) of a bad
# architecture or learning rate. Any other exception a child raised is a bug in the space, the
# data or the code. A failed child's error text starts with its exception's type name
# (``trainer.failed_result``), which is how a history row, read back, keeps the distinction.
DIVERGED = FloatingPointError


def error_type(error_text: str) -> str:
  """The exception type name a failed child's recorded error text starts with ("" if none)."""
  head = (error_text or "").split(":", 1)[0].strip()
  return head if head.isidentifier() else ""


def raised(row: dict) -> bool:
  """Did this child raise (a bug in the space or the data), rather than diverge?"""
  return bool(row["failed"] and row["error"] and error_type(row["error"]) != DIVERGED.__name__)
