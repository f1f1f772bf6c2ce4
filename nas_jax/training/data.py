"""Datasets for the child networks: scikit-learn digits (CPU-sized) and CIFAR-10.

``digits``
    scikit-learn's bundled ``load_digits()``: 1,797 greyscale 8x8 images
    (pixel values 0..16), 10 classes, shape (8, 8, 1). Pixels are scaled to
    [0, 1]. A permutation drawn with ``np.random.default_rng(seed)`` gives a
    fixed split: 250 test, 250 validation (``num_validation`` overrides), the
    remaining 1,297 train. No download is ever needed.

``cifar10``
    CIFAR-10: 32x32x3 colour images, 10 classes. The 50,000 official training
    images are split by a seeded permutation into 45,000 train and 5,000
    validation (``num_validation`` overrides); the official 10,000 test
    images form the test set. Sources, tried in order:

    1. the python archive from https://www.cs.toronto.edu/~kriz/cifar.html in
       ``data_dir``: ``cifar-10-python.tar.gz`` (read in place) or its
       extracted ``cifar-10-batches-py/`` folder. The batches are pickles, read
       by an unpickler that admits only numpy arrays and builtin values: a
       file that names anything else is refused (:class:`NotCifarBatchError`)
       before any of it runs;
    2. ``tfds.data_source("cifar10", data_dir=data_dir)``: a TFDS copy
       prepared in array_record format (works without TensorFlow; never
       downloads);
    3. otherwise :class:`DataUnavailableError` says how to get the data.

    ``augment`` is True: training should call :func:`augment_batch`, the
    paper's augmentation (upsample to 36x36, random 32x32 crop, random
    horizontal flip).

For every dataset, images are float32 N x H x W x C, standardised per channel
with the mean and standard deviation of the training split actually returned
(after ``max_train`` truncation); validation and test use the same statistics.
Labels are int32.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import os
import pickle
import tarfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nas_jax.errors import ConfigError, DataUnavailableError, NotCifarBatchError  # noqa: F401

DATASET_NAMES = ("digits", "cifar10")
_DIGITS_TEST = 250
_DIGITS_VALIDATION = 250
_CIFAR_VALIDATION = 5000
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


class Dataset(NamedTuple):
  """A split, standardised image-classification dataset (numpy arrays)."""

  name: str
  train_images: np.ndarray  # N x H x W x C float32
  train_labels: np.ndarray  # N int32
  val_images: np.ndarray
  val_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  augment: bool  # True: training should call augment_batch.


def load_dataset(name: str, data_dir: str | None = None, *,
                 num_validation: int | None = None,
                 max_train: int | None = None, seed: int = 0) -> Dataset:
  """Loads, splits and standardises a dataset.

  Args:
    name: "digits" or "cifar10".
    data_dir: folder holding the CIFAR-10 python archive or a TFDS copy of
      cifar10 (None: TFDS's default data dir). Unused for digits.
    num_validation: validation-set size (default 250 for digits, 5,000 for
      cifar10), taken from the training pool.
    max_train: if given, keep only the first ``max_train`` training examples
      of the (shuffled) training split.
    seed: seed of the permutation that defines the split.

  Returns:
    A :class:`Dataset`; same arguments give identical arrays.

  Raises:
    ValueError: unknown ``name`` or invalid sizes.
    DataUnavailableError: CIFAR-10 was requested but is not in ``data_dir``, or
      (:class:`NotCifarBatchError`) a file there is not a CIFAR-10 python batch.
  """
  rng = np.random.default_rng(seed)
  if name == "digits":
    images, labels = _load_digits()
    perm = rng.permutation(len(labels))
    test_idx, pool_idx = perm[:_DIGITS_TEST], perm[_DIGITS_TEST:]
    train_x, train_y = images[pool_idx], labels[pool_idx]
    test_x, test_y = images[test_idx], labels[test_idx]
    default_val, augment = _DIGITS_VALIDATION, False
  elif name == "cifar10":
    (train_x, train_y), (test_x, test_y) = _load_cifar10(data_dir)
    perm = rng.permutation(len(train_y))
    train_x, train_y = train_x[perm], train_y[perm]
    default_val, augment = _CIFAR_VALIDATION, True
  else:
    raise ValueError(f"data.name={name!r} is not supported; allowed values: "
                     f"{', '.join(DATASET_NAMES)}")

  n_val = default_val if num_validation is None else int(num_validation)
  if not 0 < n_val < len(train_y):
    raise ValueError(f"data.num_validation={n_val} must be in "
                     f"[1, {len(train_y) - 1}] for {name}")
  val_x, val_y = train_x[:n_val], train_y[:n_val]
  train_x, train_y = train_x[n_val:], train_y[n_val:]
  if max_train is not None:
    if max_train < 1:
      raise ValueError(f"data.max_train={max_train} must be >= 1")
    train_x, train_y = train_x[:max_train], train_y[:max_train]

  mean, std = _channel_stats(train_x)

  def standardise(x):
    out = x.astype(np.float32)  # one copy; the rest is in place
    out -= mean
    out /= std
    return out

  return Dataset(
      name=name,
      train_images=standardise(train_x),
      train_labels=train_y.astype(np.int32),
      val_images=standardise(val_x),
      val_labels=val_y.astype(np.int32),
      test_images=standardise(test_x),
      test_labels=test_y.astype(np.int32),
      num_classes=10,
      augment=augment)


def load(data_cfg, seed: int = 0):
  """The data ``config.data`` names: an image :class:`Dataset`, or a PTB ``Corpus``.

  Raises:
    ConfigError: the config asks for a split the data cannot give (e.g. a validation split
      larger than the dataset).
    DataUnavailableError: the data is not on this machine (the message says how to get it).
  """
  if data_cfg.name == "ptb":
    from nas_jax.training import ptb  # pylint: disable=import-outside-toplevel
    return ptb.load_ptb(data_cfg.level, data_cfg.data_dir or None)
  try:
    return load_dataset(data_cfg.name, data_cfg.data_dir or None,
                        num_validation=data_cfg.num_validation or None,
                        max_train=data_cfg.max_train or None, seed=seed)
  except ValueError as e:  # e.g. a validation split larger than the dataset
    raise ConfigError(str(e)) from None


def _channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std (float32) of N x H x W x C ``x``, accumulated in float64 chunks."""
  total = np.zeros(x.shape[-1])
  total_sq = np.zeros(x.shape[-1])
  for start in range(0, len(x), chunk):
    part = x[start:start + chunk].astype(np.float64)
    total += part.sum(axis=(0, 1, 2))
    total_sq += np.square(part).sum(axis=(0, 1, 2))
  count = x.size // x.shape[-1]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
  return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn digits as (1797, 8, 8, 1) float32 in [0, 1] and labels.

  Read from the CSV file scikit-learn ships (what ``load_digits`` reads) without importing
  scikit-learn, whose import (SciPy and more) adds ~110 MB to a search process's resident memory;
  ``load_digits`` where the file is not found.
  """
  spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
  path = (os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
          if spec is not None and spec.origin else "")
  if os.path.exists(path):
    with gzip.open(path, "rt") as fh:
      data = np.loadtxt(fh, delimiter=",")
    pixels, target = data[:, :-1].reshape(-1, 8, 8), data[:, -1]
  else:
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    digits = load_digits()
    pixels, target = digits.images, digits.target
  images = (pixels / 16.0).astype(np.float32)[..., None]
  return images, target.astype(np.int32)


def _load_cifar10(data_dir: str | None):
  """Returns ((train_x, train_y), (test_x, test_y)); images N x 32 x 32 x 3 uint8.

  Images stay uint8 until standardisation (which makes a prior [0, 1] scaling moot) to keep
  memory low: the float32 training set alone is ~600 MB.
  """
  raw = None
  if data_dir is not None:
    raw = _read_cifar_python(data_dir)
  if raw is None:
    raw = _read_cifar_tfds(data_dir)
  if raw is None:
    where = data_dir if data_dir is not None else "the default TFDS data dir"
    raise DataUnavailableError(
        f"CIFAR-10 not found in {where}: put {_CIFAR_ARCHIVE} "
        "(https://www.cs.toronto.edu/~kriz/cifar.html) there, or run "
        "`tfds build cifar10 --data_dir DIR --file_format array_record` on a "
        "machine with internet, and pass --config.data.data_dir=DIR")
  return tuple((x, y.astype(np.int32)) for x, y in raw)


def _numpy_core(module: str, name: str):
  """numpy's private ``_core.<module>.<name>`` (``core`` before numpy 2), without a warning."""
  try:
    return getattr(importlib.import_module(f"numpy._core.{module}"), name)
  except ImportError:
    return getattr(importlib.import_module(f"numpy.core.{module}"), name)


# The only globals a CIFAR-10 python batch may name. The official batches (Python 2 cPickle) name
# numpy.core.multiarray._reconstruct, numpy.ndarray and numpy.dtype; numpy >= 2 spells the first
# numpy._core; pickle protocol 5 writes arrays through _frombuffer, and Python 3 at protocols 0-2
# writes bytes through _codecs.encode. None of them runs code a file chooses.
_CIFAR_PICKLE_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_core("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_core("multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): _numpy_core("numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): _numpy_core("numeric", "_frombuffer"),
    ("_codecs", "encode"): importlib.import_module("_codecs").encode,
}


class _CifarUnpickler(pickle.Unpickler):
  """Unpickles a CIFAR-10 batch: dicts, bytes, ints and numpy arrays; nothing that runs code."""

  def __init__(self, file, where: str):
    super().__init__(file, encoding="bytes")
    self._where = where

  def find_class(self, module, name):
    found = _CIFAR_PICKLE_GLOBALS.get((module, name))
    if found is None:
      raise NotCifarBatchError(
          f"{self._where} is not a CIFAR-10 python batch: it asks to load {module}.{name}, "
          f"which a CIFAR-10 batch never holds, so it was not read; replace it with the "
          f"official {_CIFAR_ARCHIVE} (https://www.cs.toronto.edu/~kriz/cifar.html)")
    return found


def _load_cifar_batch(file, where: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads one CIFAR batch (rows of 3x32x32 uint8, CHW) from ``file`` -> (N,32,32,3), labels.

  ``where`` names the file in errors. Anything but a dict with ``data`` (N x 3072 uint8) and
  ``labels`` (N ints) raises :class:`NotCifarBatchError`.
  """
  def refuse(why):
    return NotCifarBatchError(f"{where} is not a CIFAR-10 python batch ({why}); replace it "
                              f"with the official {_CIFAR_ARCHIVE} "
                              "(https://www.cs.toronto.edu/~kriz/cifar.html)")
  try:
    batch = _CifarUnpickler(file, where).load()
  except NotCifarBatchError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # A truncated or garbled file raises any of EOFError, UnpicklingError, ValueError, ...
    raise refuse(f"unpickling failed: {type(e).__name__}: {e}".replace("\n", " ")) from e
  if not isinstance(batch, dict):
    raise refuse(f"it holds a {type(batch).__name__}, not a dict")
  data = batch.get(b"data", batch.get("data"))
  labels = batch.get(b"labels", batch.get("labels"))
  if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
      or data.shape[1] != 3 * 32 * 32:
    raise refuse("no 'data' array of N x 3072 uint8")
  if not isinstance(labels, list) or len(labels) != len(data) \
      or not all(isinstance(y, int) for y in labels):
    raise refuse(f"no 'labels' list of {len(data)} ints")
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, np.asarray(labels, dtype=np.int64)


def _read_cifar_python(data_dir: str):
  """Reads the CIFAR-10 python archive (tar.gz or extracted); None if absent."""
  names = _CIFAR_TRAIN_BATCHES + ("test_batch",)
  archive = os.path.join(data_dir, _CIFAR_ARCHIVE)
  folder = os.path.join(data_dir, _CIFAR_FOLDER)
  batches = {}
  if os.path.isdir(folder):
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
      raise DataUnavailableError(f"{folder} lacks {', '.join(missing)}: re-extract it from "
                                 f"{_CIFAR_ARCHIVE} (https://www.cs.toronto.edu/~kriz/cifar.html)")
    for n in names:
      path = os.path.join(folder, n)
      with open(path, "rb") as f:
        batches[n] = _load_cifar_batch(f, path)
  elif os.path.isfile(archive):
    with tarfile.open(archive, "r:gz") as tar:
      for member in tar:
        base = os.path.basename(member.name)
        if member.isfile() and base in names:
          batches[base] = _load_cifar_batch(tar.extractfile(member),
                                            f"{member.name} in {archive}")
    missing = [n for n in names if n not in batches]
    if missing:
      raise DataUnavailableError(f"{archive} lacks {', '.join(missing)}: "
                                 "re-download it from "
                                 "https://www.cs.toronto.edu/~kriz/cifar.html")
  else:
    return None
  train = [batches[n] for n in _CIFAR_TRAIN_BATCHES]
  return ((np.concatenate([x for x, _ in train]),
           np.concatenate([y for _, y in train])),
          batches["test_batch"])


def _read_cifar_tfds(data_dir: str | None, chunk: int = 1000):
  """Reads CIFAR-10 through ``tfds.data_source``; None if it is not prepared."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    sources = tfds.data_source("cifar10", split=["train", "test"],
                               data_dir=data_dir, download=False)
  except Exception:  # pylint: disable=broad-except
    # tfds raises various errors for an absent/unprepared dataset (e.g.
    # DatasetNotFoundError, NotImplementedError for a TFRECORD-only copy).
    return None
  try:
    return tuple(_read_source(src, chunk) for src in sources)
  except ImportError as e:  # tfds decodes the stored PNGs with OpenCV or Pillow.
    where = data_dir if data_dir is not None else "the default TFDS data dir"
    raise DataUnavailableError(
        f"CIFAR-10 found as a TFDS copy in {where}, but decoding it needs Pillow or OpenCV: "
        f"`pip install pillow`, or put {_CIFAR_ARCHIVE} there instead") from e


def _read_source(src, chunk: int) -> tuple[np.ndarray, np.ndarray]:
  """All records of a TFDS data source as (uint8 images, labels)."""
  n = len(src)
  images = np.empty((n, 32, 32, 3), dtype=np.uint8)
  labels = np.empty((n,), dtype=np.int64)
  for start in range(0, n, chunk):
    keys = list(range(start, min(start + chunk, n)))
    try:
      records = src.__getitems__(keys)  # batched read (array_record)
    except (AttributeError, TypeError):
      records = [src[i] for i in keys]  # e.g. tfds.testing.mock_data sources
    for i, rec in zip(keys, records):
      images[i] = rec["image"]
      labels[i] = rec["label"]
  return images, labels


def augment_batch(key: jax.Array, images_BxHxWxC: jax.Array,
                  upsample: int = 36) -> jax.Array:
  """The paper's CIFAR-10 augmentation: upsample, random crop, random flip.

  Each image is resized bilinearly to ``upsample x upsample``, a random
  H x W window (the input's size) is cropped from it, and the crop is flipped
  left-right with probability 0.5. Offsets and flips are drawn per example.
  Pure and jit-able (``upsample`` must be static).

  Args:
    key: PRNG key; the same key gives the same output.
    images_BxHxWxC: batch of images.
    upsample: side of the upsampled image; must be >= H and >= W.

  Returns:
    Augmented images, same shape and dtype as ``images_BxHxWxC``.
  """
  b, h, w, c = images_BxHxWxC.shape
  if upsample < h or upsample < w:
    raise ValueError(f"upsample={upsample} must be >= image size {h}x{w}")
  big = jax.image.resize(images_BxHxWxC, (b, upsample, upsample, c),
                         method="bilinear")
  key_y, key_x, key_flip = jax.random.split(key, 3)
  off_y = jax.random.randint(key_y, (b,), 0, upsample - h + 1)
  off_x = jax.random.randint(key_x, (b,), 0, upsample - w + 1)

  def crop(img, y, x):
    return jax.lax.dynamic_slice(img, (y, x, 0), (h, w, c))

  out = jax.vmap(crop)(big, off_y, off_x)
  flip = jax.random.bernoulli(key_flip, 0.5, (b,))
  out = jnp.where(flip[:, None, None, None], out[:, :, ::-1, :], out)
  return out.astype(images_BxHxWxC.dtype)
