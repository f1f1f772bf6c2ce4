"""nas_jax.training.data: digits, CIFAR-10 sources (archive, TFDS, missing, crafted), augmentation."""

import builtins
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

from nas_jax.training import data


# ----------------------------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def digits():
  return data.load_dataset("digits")


def _unstandardise_digits(x):
  """Maps standardised digits pixels back to the integers 0..16 (the map is affine, increasing)."""
  levels = np.unique(np.round(x, 4))
  assert len(levels) == 17  # every raw value 0..16 occurs
  step = (levels[-1] - levels[0]) / 16
  return np.rint((x - levels[0]) / step).astype(np.int64)


def test_digits_shapes_dtypes_sizes(digits):
  assert digits.name == "digits"
  assert digits.num_classes == 10 and digits.augment is False
  assert digits.train_images.shape == (1297, 8, 8, 1)
  assert digits.val_images.shape == (250, 8, 8, 1)
  assert digits.test_images.shape == (250, 8, 8, 1)
  for x, y in [(digits.train_images, digits.train_labels), (digits.val_images, digits.val_labels),
               (digits.test_images, digits.test_labels)]:
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert len(x) == len(y)
    assert y.min() >= 0 and y.max() <= 9
  assert set(np.unique(digits.train_labels)) == set(range(10))


def test_digits_standardised_with_train_stats(digits):
  np.testing.assert_allclose(digits.train_images.mean(axis=(0, 1, 2)), [0.0], atol=1e-4)
  np.testing.assert_allclose(digits.train_images.std(axis=(0, 1, 2)), [1.0], atol=1e-4)
  # Validation/test use the train statistics, so they are not exactly standardised themselves.
  assert abs(float(digits.val_images.mean())) > 1e-6


def test_digits_splits_partition_the_dataset(digits):
  """The three splits together hold every (image, label) pair of load_digits exactly once."""
  x = np.concatenate([digits.train_images, digits.val_images, digits.test_images])
  y = np.concatenate([digits.train_labels, digits.val_labels, digits.test_labels])
  got = np.concatenate([_unstandardise_digits(x).reshape(len(x), 64), y[:, None]], axis=1)
  ref = load_digits()
  want = np.concatenate([ref.images.reshape(-1, 64).astype(np.int64), ref.target[:, None]], axis=1)
  sort_rows = lambda a: a[np.lexsort(a.T[::-1])]
  np.testing.assert_array_equal(sort_rows(got), sort_rows(want))


def test_digits_deterministic_per_seed(digits):
  again = data.load_dataset("digits", seed=0)
  for a, b in zip(digits, again):
    if isinstance(a, np.ndarray):
      np.testing.assert_array_equal(a, b)
  other = data.load_dataset("digits", seed=1)
  assert not np.array_equal(digits.test_labels, other.test_labels)
  assert not np.array_equal(digits.train_images, other.train_images)


def test_digits_num_validation_and_max_train():
  ds = data.load_dataset("digits", num_validation=100, max_train=500)
  assert ds.train_images.shape[0] == 500 and len(ds.train_labels) == 500
  assert ds.val_images.shape[0] == 100
  assert ds.test_images.shape[0] == 250
  # Statistics come from the truncated training set.
  np.testing.assert_allclose(ds.train_images.mean(), 0.0, atol=1e-4)
  np.testing.assert_allclose(ds.train_images.std(), 1.0, atol=1e-4)


@pytest.mark.parametrize("kwargs", [dict(num_validation=0), dict(num_validation=1547),
                                    dict(max_train=0)])
def test_bad_sizes_raise(kwargs):
  with pytest.raises(ValueError):
    data.load_dataset("digits", **kwargs)


def test_unknown_name_raises():
  with pytest.raises(ValueError, match=r"data\.name.*digits.*cifar10"):
    data.load_dataset("mnist")


# ----------------------------------------------------------------------------------------------
# CIFAR-10 from a synthetic python archive

_N_PER_BATCH = 4  # 5 train batches -> 20 train-pool images


def _pattern_chw():
  """A 3x32x32 uint8 test image whose three channels are different, non-symmetric ramps."""
  h, w = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
  return np.stack([h * 7 + w, 255 - (h * 7 + w), w * 7 + h]).astype(np.uint8)


def _write_cifar_archive(directory, *, drop=None, dumps=pickle.dumps, replace=None):
  """Writes cifar-10-python.tar.gz: train image i is constant per channel (10i, 255-10i, 3i).

  ``dumps`` pickles each batch; ``replace`` maps batch names to the bytes stored instead.
  """
  batches = {}
  for b in range(5):
    idx = np.arange(b * _N_PER_BATCH, (b + 1) * _N_PER_BATCH)
    values = np.stack([10 * idx, 255 - 10 * idx, 3 * idx], axis=1).astype(np.uint8)  # (n, 3)
    imgs = np.broadcast_to(values[:, :, None, None], (len(idx), 3, 32, 32))
    batches[f"data_batch_{b + 1}"] = {b"data": imgs.reshape(len(idx), 3072),
                                      b"labels": [int(i % 10) for i in idx]}
  rng = np.random.default_rng(0)
  test = np.concatenate([_pattern_chw()[None], rng.integers(0, 256, (2, 3, 32, 32))])
  batches["test_batch"] = {b"data": test.astype(np.uint8).reshape(3, 3072), b"labels": [3, 1, 4]}
  path = os.path.join(directory, "cifar-10-python.tar.gz")
  with tarfile.open(path, "w:gz") as tar:
    for name, batch in batches.items():
      if name == drop:
        continue
      blob = (replace or {}).get(name) or dumps(batch)
      info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
  return path


def _check_synthetic_cifar(ds):
  assert ds.name == "cifar10" and ds.augment is True and ds.num_classes == 10
  assert ds.train_images.shape == (15, 32, 32, 3) and ds.val_images.shape == (5, 32, 32, 3)
  assert ds.test_images.shape == (3, 32, 32, 3)
  assert ds.train_images.dtype == np.float32 and ds.train_labels.dtype == np.int32
  np.testing.assert_array_equal(ds.test_labels, [3, 1, 4])  # test set keeps its order
  # Test image 0: each channel must be an increasing affine function of the CHW pattern's channel.
  pattern = _pattern_chw()
  for c in range(3):
    got = ds.test_images[0, :, :, c].ravel().astype(np.float64)
    want = pattern[c].ravel().astype(np.float64)
    slope, intercept = np.polyfit(want, got, 1)
    assert slope > 0
    np.testing.assert_allclose(got, slope * want + intercept, atol=1e-4)
  # Train/val images are constant per channel with value 10*i in channel 0: recover i, check label.
  x = np.concatenate([ds.train_images, ds.val_images])
  y = np.concatenate([ds.train_labels, ds.val_labels])
  assert np.all(x.std(axis=(1, 2)) < 1e-6)
  i = np.argsort(np.argsort(x[:, 0, 0, 0]))  # rank of channel 0 == original index i
  np.testing.assert_array_equal(y, i % 10)
  # Channel 1 decreases with i, channel 2 increases: the channel order survived decoding.
  assert np.all(np.diff(x[np.argsort(i), 0, 0, 1]) < 0)
  assert np.all(np.diff(x[np.argsort(i), 0, 0, 2]) > 0)
  np.testing.assert_allclose(ds.train_images.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)


def test_cifar10_from_python_archive(tmp_path):
  _write_cifar_archive(str(tmp_path))
  ds = data.load_dataset("cifar10", str(tmp_path), num_validation=5)
  _check_synthetic_cifar(ds)
  again = data.load_dataset("cifar10", str(tmp_path), num_validation=5)
  np.testing.assert_array_equal(ds.train_images, again.train_images)
  small = data.load_dataset("cifar10", str(tmp_path), num_validation=5, max_train=7)
  assert small.train_images.shape == (7, 32, 32, 3) and len(small.train_labels) == 7


def test_cifar10_from_extracted_folder(tmp_path):
  archive_dir, extracted_dir = tmp_path / "a", tmp_path / "x"
  archive_dir.mkdir()
  extracted_dir.mkdir()
  with tarfile.open(_write_cifar_archive(str(archive_dir))) as tar:
    tar.extractall(extracted_dir, filter="data")
  from_folder = data.load_dataset("cifar10", str(extracted_dir), num_validation=5)
  _check_synthetic_cifar(from_folder)
  from_archive = data.load_dataset("cifar10", str(archive_dir), num_validation=5)
  for a, b in zip(from_folder, from_archive):
    if isinstance(a, np.ndarray):
      np.testing.assert_array_equal(a, b)


class _Python2Pickler(pickle._Pickler):  # pylint: disable=protected-access
  """Pickles as Python 2's cPickle wrote the official batches: every str and bytes a BINSTRING."""

  dispatch = pickle._Pickler.dispatch.copy()  # pylint: disable=protected-access

  def _save_str8(self, obj):
    raw = obj.encode("latin1") if isinstance(obj, str) else obj
    if len(raw) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
    else:
      self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
    self.memoize(obj)

  dispatch[bytes] = _save_str8
  dispatch[str] = _save_str8


def _python2_dumps(batch, *, numpy_module="numpy.core.multiarray"):
  """A batch as the official archive holds it: protocol 2, str keys, numpy.core's _reconstruct."""
  batch = {k.decode(): v for k, v in batch.items()}
  batch.update(batch_label="training batch 1 of 5",
               filenames=[f"img_{i}.png" for i in range(len(batch["labels"]))])
  f = io.BytesIO()
  _Python2Pickler(f, protocol=2).dump(batch)
  blob = f.getvalue()
  assert b"cnumpy._core.multiarray\n_reconstruct\n" in blob and b"U\x04data" in blob
  return blob.replace(b"cnumpy._core.multiarray\n_reconstruct\n",
                      f"c{numpy_module}\n_reconstruct\n".encode())


@pytest.mark.parametrize("dumps", [
    _python2_dumps,
    lambda b: _python2_dumps(b, numpy_module="numpy._core.multiarray"),
    lambda b: pickle.dumps(b, protocol=2),
    lambda b: pickle.dumps(b, protocol=5),
], ids=["python2-numpy.core", "python2-numpy._core", "protocol2", "protocol5"])
@pytest.mark.parametrize("extract", [False, True])
def test_cifar10_batches_in_every_pickle_spelling_load(tmp_path, dumps, extract):
  """The safe unpickler admits the official batches' format and numpy/pickle's newer spellings."""
  path = _write_cifar_archive(str(tmp_path), dumps=dumps)
  if extract:
    with tarfile.open(path) as tar:
      tar.extractall(tmp_path, filter="data")
    os.remove(path)
  _check_synthetic_cifar(data.load_dataset("cifar10", str(tmp_path), num_validation=5))


class _RunsOnUnpickle:
  """Unpickling this calls ``fn(arg)``: what a crafted batch does to a plain pickle.load."""

  def __init__(self, fn, arg):
    self.fn, self.arg = fn, arg

  def __reduce__(self):
    return self.fn, (self.arg,)


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "inside the dict"])
@pytest.mark.parametrize("extract", [False, True])
def test_cifar10_crafted_batch_is_refused_before_it_runs(tmp_path, payload, extract):
  marker = tmp_path / "pwned"
  evil = {"os.system": _RunsOnUnpickle(os.system, f"touch {marker}"),
          "builtins.eval": _RunsOnUnpickle(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
          "inside the dict": {b"data": np.zeros((1, 3072), np.uint8),
                              b"labels": [_RunsOnUnpickle(os.system, f"touch {marker}")]},
          }[payload]
  path = _write_cifar_archive(str(tmp_path), replace={"data_batch_1": pickle.dumps(evil)})
  if extract:
    with tarfile.open(path) as tar:
      tar.extractall(tmp_path, filter="data")
    os.remove(path)
    where = os.path.join(str(tmp_path), "cifar-10-batches-py", "data_batch_1")
  else:
    where = f"cifar-10-batches-py/data_batch_1 in {path}"
  with pytest.raises(data.NotCifarBatchError) as info:
    data.load_dataset("cifar10", str(tmp_path))
  message = str(info.value)
  assert message.startswith(f"{where} is not a CIFAR-10 python batch"), message
  assert ("posix.system" in message or "os.system" in message or "builtins.eval" in message)
  assert "\n" not in message
  assert isinstance(info.value, data.DataUnavailableError)  # the CLI prints it as one line
  assert not marker.exists()


@pytest.mark.parametrize("blob, why", [
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]})[:-40],
     "unpickling failed"),
    (b"not a pickle at all", "unpickling failed"),
    (pickle.dumps([1, 2, 3]), "holds a list"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [1, 2]}), "'data'"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}), "'labels'"),
], ids=["truncated", "garbage", "not-a-dict", "float-data", "short-labels"])
def test_cifar10_garbled_batch_is_refused_in_one_line(tmp_path, blob, why):
  _write_cifar_archive(str(tmp_path), replace={"test_batch": blob})
  with pytest.raises(data.NotCifarBatchError, match="test_batch in .* is not a CIFAR-10") as info:
    data.load_dataset("cifar10", str(tmp_path))
  assert why in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("extract", [False, True])
def test_cifar10_incomplete_archive_raises(tmp_path, extract):
  path = _write_cifar_archive(str(tmp_path), drop="data_batch_3")
  if extract:
    with tarfile.open(path) as tar:
      tar.extractall(tmp_path, filter="data")
    os.remove(path)
  with pytest.raises(data.DataUnavailableError, match="data_batch_3") as info:
    data.load_dataset("cifar10", str(tmp_path))
  assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------
# CIFAR-10 through tfds.data_source (mocked) and when absent


def test_cifar10_from_tfds_mock(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  # mock_data serves `num_examples` random records for every split (train and test alike).
  with tfds.testing.mock_data(num_examples=60):
    ds = data.load_dataset("cifar10", str(tmp_path), num_validation=10)
  assert ds.augment is True and ds.num_classes == 10
  assert ds.train_images.shape == (50, 32, 32, 3) and ds.val_images.shape == (10, 32, 32, 3)
  assert ds.test_images.shape == (60, 32, 32, 3)
  for y in (ds.train_labels, ds.val_labels, ds.test_labels):
    assert y.dtype == np.int32 and y.min() >= 0 and y.max() <= 9
  np.testing.assert_allclose(ds.train_images.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
  np.testing.assert_allclose(ds.train_images.std(axis=(0, 1, 2)), 1.0, atol=1e-4)


def test_cifar10_missing_raises_one_line_error(tmp_path):
  with pytest.raises(data.DataUnavailableError) as info:
    data.load_dataset("cifar10", str(tmp_path))
  message = str(info.value)
  assert "\n" not in message
  assert str(tmp_path) in message and "cifar-10-python.tar.gz" in message
  assert isinstance(info.value, RuntimeError)
  assert os.listdir(tmp_path) == []  # nothing was downloaded or prepared there


def test_cifar10_tfds_without_image_decoder_raises_one_line_error(tmp_path, monkeypatch):
  """A prepared TFDS copy that cannot be decoded (no Pillow/OpenCV) gives a DataUnavailableError."""
  tfds = pytest.importorskip("tensorflow_datasets")

  class Undecodable:
    def __len__(self):
      return 3

    def __getitem__(self, i):
      raise ImportError("Decoding images with NumPy requires either OpenCV or PIL.\nInstall them")

  monkeypatch.setattr(tfds, "data_source", lambda *a, **k: [Undecodable(), Undecodable()])
  with pytest.raises(data.DataUnavailableError, match="pillow") as info:
    data.load_dataset("cifar10", str(tmp_path))
  assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


# ----------------------------------------------------------------------------------------------
# augment_batch


def _rand_images(seed, shape=(16, 32, 32, 3)):
  return jax.random.normal(jax.random.PRNGKey(seed), shape)


def test_augment_shape_dtype_and_determinism():
  x = _rand_images(0)
  key = jax.random.PRNGKey(1)
  out = data.augment_batch(key, x)
  assert out.shape == x.shape and out.dtype == x.dtype
  np.testing.assert_array_equal(out, data.augment_batch(key, x))
  assert not np.allclose(out, data.augment_batch(jax.random.PRNGKey(2), x))
  jitted = jax.jit(data.augment_batch, static_argnums=2)
  np.testing.assert_allclose(jitted(key, x, 36), out, atol=1e-5)
  # Non-square, non-32 input: crops back to the input size.
  y = _rand_images(3, (4, 8, 12, 1))
  assert data.augment_batch(key, y, upsample=14).shape == (4, 8, 12, 1)


def test_augment_without_upsampling_is_identity_or_flip():
  """upsample == H == W leaves only the flip: each output is the image or its mirror; both occur."""
  x = _rand_images(4, (64, 32, 32, 3))
  out = np.asarray(data.augment_batch(jax.random.PRNGKey(5), x, upsample=32))
  x = np.asarray(x)
  same = np.all(np.isclose(out, x, atol=1e-5), axis=(1, 2, 3))
  mirrored = np.all(np.isclose(out, x[:, :, ::-1], atol=1e-5), axis=(1, 2, 3))
  assert np.all(same | mirrored)
  assert 10 < mirrored.sum() < 54  # p=0.5 flips, per example


def test_augment_preserves_constant_axes_and_crops_randomly():
  ramp = jnp.arange(32, dtype=jnp.float32)
  # Constant along W (ramp along H): flips and crops keep it constant along W, never flipped in H.
  rows = jnp.broadcast_to(ramp[None, :, None, None], (64, 32, 32, 1))
  out = np.asarray(data.augment_batch(jax.random.PRNGKey(6), rows))
  np.testing.assert_allclose(out, np.broadcast_to(out[:, :, :1], out.shape), atol=1e-5)
  assert np.all(np.diff(out[:, :, 0, 0], axis=1) > 0)
  # Random vertical offsets: the top-left value varies across the batch, within the ramp's range.
  assert len(np.unique(np.round(out[:, 0, 0, 0], 3))) > 1
  assert out.min() >= -1e-5 and out.max() <= 31 + 1e-5
  # Ramp along W: every output is monotone in W; increasing (kept) and decreasing (flipped) occur.
  cols = jnp.broadcast_to(ramp[None, None, :, None], (64, 32, 32, 1))
  out = np.asarray(data.augment_batch(jax.random.PRNGKey(7), cols))
  np.testing.assert_allclose(out, np.broadcast_to(out[:, :1], out.shape), atol=1e-5)
  d = np.diff(out[:, 0, :, 0], axis=1)
  increasing, decreasing = np.all(d > 0, axis=1), np.all(d < 0, axis=1)
  assert np.all(increasing | decreasing) and increasing.any() and decreasing.any()


def test_augment_rejects_too_small_upsample():
  with pytest.raises(ValueError, match="upsample"):
    data.augment_batch(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)), upsample=30)


def test_digits_read_without_sklearn_are_load_digits(monkeypatch):
  """The digits read from scikit-learn's CSV file are load_digits()'s, and loading them does not
  import scikit-learn (~110 MB of resident memory in a search); without the file, load_digits."""
  ref = load_digits()
  code = ("import sys; from nas_jax.training import data; data._load_digits(); "
          "print('sklearn' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False", out.stderr[-2000:]
  for missing in (False, True):
    if missing:
      monkeypatch.setattr(data.os.path, "exists", lambda path: False)
    images, labels = data._load_digits()  # pylint: disable=protected-access
    np.testing.assert_array_equal(images[..., 0], (ref.images / 16.0).astype(np.float32))
    np.testing.assert_array_equal(labels, ref.target)
    assert images.dtype == np.float32 and labels.dtype == np.int32
