"""WordPiece tokenization with tensorflow-text's BertTokenizer, fixed length (FLIP: 32)."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

from flip import errors
from flip.models import text as text_lib

DEFAULT_VOCAB = os.path.join(os.path.dirname(__file__), "vocab_bert_base_uncased.txt")


def normalize(texts: tf.Tensor) -> tf.Tensor:
  """BERT's clean-up before WordPiece: drop format/control characters, lower-case, strip accents.

  Tokenizer.wordpieces applies it to every caption and tools/build_vocab.py to the corpus a
  vocabulary is learned from, so both see exactly the same text.
  """
  # BERT drops format and control characters (zero-width joiners, U+FFFD, ...) first.
  texts = tf.strings.regex_replace(texts, r"[\p{Cf}\x{FFFD}\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]", "")
  texts = tf.strings.lower(texts, encoding="utf-8")
  return tf.strings.regex_replace(tf_text.normalize_utf8(texts, "NFD"), r"\p{Mn}", "")


FLAVOURS = ("wordpiece", "flip_official")


class Tokenizer:
  """Lower-cased BERT WordPiece: [CLS] pieces [SEP], truncated to and padded with 0 to max_len.

  flavour="flip_official": the released FLIP code's tokenization, for its weights: tf.text's
  BertTokenizer(lower_case=True) (NFKC case folding), no [CLS]/[SEP], the first max_len pieces,
  padded with 0; its vocabulary size counts the lookup table's out-of-vocabulary slot (30,523).
  """

  def __init__(self, vocab_path: str | None = None, max_len: int = 32,
               flavour: str = "wordpiece"):
    if flavour not in FLAVOURS:
      raise errors.ConfigError(f"Unknown WordPiece flavour {flavour!r}: one of {FLAVOURS}.")
    self.special_tokens = flavour == "wordpiece"
    self.vocab_path = vocab_path or DEFAULT_VOCAB
    if not tf.io.gfile.exists(self.vocab_path):
      raise errors.NotFoundError(f"WordPiece vocabulary {self.vocab_path} not found; set "
                                 "config.input.vocab_path to a file with one token per line.")
    with tf.io.gfile.GFile(self.vocab_path) as f:
      vocab = [line.rstrip("\n") for line in f]
    if max_len < (3 if self.special_tokens else 1):
      raise errors.ConfigError(
          f"max_len={max_len} leaves no room for text between [CLS] and [SEP].")
    missing = {"[PAD]", "[UNK]", "[CLS]", "[SEP]"} - set(vocab)
    if missing or vocab[text_lib.PAD_ID] != "[PAD]":
      raise errors.ConfigError(
          f"Vocabulary {self.vocab_path} lacks BERT's special tokens {sorted(missing)} "
          "or does not start with [PAD]; build it with [PAD] first.")
    self.vocab_size = len(vocab)
    self.max_len = max_len
    self.cls_id, self.sep_id = vocab.index("[CLS]"), vocab.index("[SEP]")
    table = tf.lookup.StaticVocabularyTable(
        tf.lookup.KeyValueTensorInitializer(vocab, tf.range(len(vocab), dtype=tf.int64)),
        num_oov_buckets=1)
    # Lower-casing is done as BERT's reference tokenizer does it (Unicode lower case, NFD, accents
    # dropped) rather than with tf_text's `lower_case=True`, whose NFKC case folding also turns
    # "ß" into "ss", ligatures into letters and full-width forms into ASCII (the released FLIP
    # code used that, so its flavour does too).
    self._bert = tf_text.BertTokenizer(table, lower_case=not self.special_tokens,
                                       token_out_type=tf.int32)
    if not self.special_tokens:
      self.vocab_size += 1  # the released code's model counts the table's OOV slot
    # One tf.function, traced on first use (~0.3 s) and called from then on: by the training
    # pipeline, the evaluators' prompts and captions, a resumed pipeline.
    self._tokenize_fn = tf.function(self._tokenize, autograph=False,
                                    input_signature=[tf.TensorSpec([None], tf.string)])

  def wordpieces(self, texts: tf.Tensor) -> tf.RaggedTensor:
    """Strings [b] -> ragged WordPiece ids [b, None], no special tokens, no truncation."""
    if not self.special_tokens:
      return self._bert.tokenize(texts).merge_dims(-2, -1)
    return self._bert.tokenize(normalize(texts)).merge_dims(-2, -1)

  def tokenize(self, texts: tf.Tensor) -> tf.Tensor:
    """Strings [b] -> int32 [b, max_len]: graph-compatible, for tf.data (traced once)."""
    return self._tokenize_fn(texts)

  def _tokenize(self, texts: tf.Tensor) -> tf.Tensor:
    if not self.special_tokens:
      return self.wordpieces(texts)[:, : self.max_len].to_tensor(
          default_value=text_lib.PAD_ID, shape=[None, self.max_len])
    pieces = self.wordpieces(texts)[:, : self.max_len - 2]
    edge = tf.RaggedTensor.from_tensor(tf.ones([pieces.nrows(), 1], pieces.dtype))
    ids = tf.concat([edge * self.cls_id, pieces, edge * self.sep_id], axis=1)
    return ids.to_tensor(default_value=text_lib.PAD_ID, shape=[None, self.max_len])

  def __call__(self, texts: list[str]) -> np.ndarray:
    return self.tokenize(tf.constant(list(texts), dtype=tf.string)).numpy()


def from_config(input_config, vocab_path: str | None = None):
  """The tokenizer config.input selects: WordPiece (Tokenizer, also in the released FLIP
  code's flavour) or CLIP's byte-level BPE (flip.data.bpe.BpeTokenizer), with `vocab_path`,
  else config.input.vocab_path, else the packaged vocabulary, at length config.input.text_len."""
  path = vocab_path or input_config.vocab_path
  if input_config.tokenizer == "bpe":
    from flip.data import bpe  # pylint: disable=g-import-not-at-top
    return bpe.BpeTokenizer(path, input_config.text_len)
  return Tokenizer(path, input_config.text_len, flavour=input_config.tokenizer)


def check_vocab_size(tokenizer: Tokenizer, model_vocab_size: int) -> None:
  if tokenizer.vocab_size != model_vocab_size:
    raise errors.ConfigError(
        f"The vocabulary {tokenizer.vocab_path} has {tokenizer.vocab_size} tokens but "
        f"config.model.text.vocab_size={model_vocab_size}: set "
        f"--config.model.text.vocab_size={tokenizer.vocab_size} or use the matching vocabulary.")
