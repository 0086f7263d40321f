"""WordPiece tokenizer: the packaged BERT-base uncased vocabulary, length 32, padding."""

import numpy as np
import pytest
import tensorflow as tf

from flip.data import tokenizer as tokenizer_lib


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.Tokenizer(max_len=32)


def test_known_bert_ids(tok):
  # Ids of bert-base-uncased: [CLS]=101 a=1037 photo=6302 of=1997 red=2417 circle=4418 [SEP]=102.
  ids = tok(["A Photo of a RED circle"])[0]
  assert ids[:8].tolist() == [101, 1037, 6302, 1997, 1037, 2417, 4418, 102]
  assert (ids[8:] == 0).all() and ids.shape == (32,)
  assert tok.vocab_size == 30522


def test_accents_are_stripped_and_unknown_is_unk(tok):
  assert tok(["café"])[0][:3].tolist() == tok(["cafe"])[0][:3].tolist()
  assert 100 in tok(["😀"])[0].tolist()  # [UNK]


def test_truncates_to_max_len_keeping_sep(tok):
  ids = tok(["word " * 100, ""])
  assert ids.shape == (2, 32) and ids.dtype == np.int32
  assert ids[0, 0] == 101 and ids[0, -1] == 102 and (ids[0] != 0).all()
  assert ids[1, :2].tolist() == [101, 102] and (ids[1, 2:] == 0).all()


def test_traced_once_for_the_pipeline_and_direct_calls():
  # A fresh tokenizer: batches of any size, in tf.data and called directly, run one trace
  # (~0.3 s of start-up each time it was traced again).
  tok = tokenizer_lib.Tokenizer(max_len=8)
  want = tok(["a red circle", "two blue squares", "x"])
  for n in (1, 3):
    ds = tf.data.Dataset.from_tensor_slices(["a red circle", "two blue squares", "x"][:n])
    got = next(ds.batch(n).map(tok.tokenize).as_numpy_iterator())
    np.testing.assert_array_equal(got, want[:n])
  assert tok._tokenize_fn.experimental_get_tracing_count() == 1  # pylint: disable=protected-access


def test_vocab_size_mismatch_is_a_clear_error(tok):
  with pytest.raises(ValueError, match="vocab_size=30522"):
    tokenizer_lib.check_vocab_size(tok, 1000)
  tokenizer_lib.check_vocab_size(tok, 30522)


def test_missing_vocab_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="vocab_path"):
    tokenizer_lib.Tokenizer(str(tmp_path / "nope.txt"))
  bad = tmp_path / "bad.txt"
  bad.write_text("hello\nworld\n")
  with pytest.raises(ValueError, match="special tokens"):
    tokenizer_lib.Tokenizer(str(bad))


def test_flip_official_flavour_is_the_released_codes_tokenization():
  """The released FLIP code's tokenization: tf.text BertTokenizer(lower_case=True) on the file,
  no special tokens, tf.text pad_model_inputs to 32 (its input_pipeline_laion.py)."""
  import tensorflow as tf
  import tensorflow_text as tf_text
  released = tokenizer_lib.Tokenizer(max_len=32, flavour="flip_official")
  assert released.vocab_size == 30523  # the lookup table's OOV slot counted, as its model does
  texts = ["A Photo of a RED circle", "Straße, ﬁne Ｆｕｌｌ-width café", "東京 😀 well-known",
           "word " * 50, ""]
  reference = tf_text.BertTokenizer(tokenizer_lib.DEFAULT_VOCAB, lower_case=True,
                                    token_out_type=tf.int32)
  want = np.stack([tf_text.pad_model_inputs(reference.tokenize(tf.constant([t])).merge_dims(
      1, -1), 32)[0][0].numpy() for t in texts])
  got = released(texts)
  np.testing.assert_array_equal(got, want)
  assert got[0, :6].tolist() == [1037, 6302, 1997, 1037, 2417, 4418] and got[0, 6] == 0
  assert (got[3] == got[3, 0]).all()  # the first 32 pieces, no [SEP]
  with pytest.raises(ValueError, match="Unknown WordPiece flavour"):
    tokenizer_lib.Tokenizer(flavour="bert")
