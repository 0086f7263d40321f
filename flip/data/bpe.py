"""CLIP's byte-level BPE tokenizer (49,408 ids, length 77), usable in the tf.data input pipeline.

BpeTokenizer reproduces `open_clip.tokenize(texts, context_length=max_len)` (open_clip 3.3.0's
SimpleTokenizer with its default clean="lower", itself OpenAI CLIP's tokenizer) id for id:
ftfy.fix_text, HTML unescaped twice, whitespace collapsed, lower case, CLIP's regex split, the
byte encoder and the merges of bpe_simple_vocab_16e6.txt.gz, then <start_of_text> ids
<end_of_text>, truncated to max_len with <end_of_text> kept last, and padded with 0. A literal
"<start_of_text>" or "<end_of_text>" in a caption becomes that special id, as in open_clip.

The merges run in Python (through tf.numpy_function inside tf.data), with a per-word cache as in
CLIP; neither torch nor open_clip is needed. Padding is 0 as in open_clip, although id 0 is also
the token "!" (not at a word end: `said "wow!", then` has it): code that finds padding with
`ids == 0` also drops those.
"""

from __future__ import annotations

import functools
import gzip
import html
import os
import zlib
from collections.abc import Sequence

import ftfy
import numpy as np
import regex
import tensorflow as tf

from flip import errors

DEFAULT_VOCAB = os.path.join(os.path.dirname(__file__), "bpe_simple_vocab_16e6.txt.gz")
PAD_ID = 0  # open_clip pads with 0 (= flip.models.text.PAD_ID)
NUM_MERGES = 49152 - 256 - 2  # open_clip uses merge lines 1 .. 48894 of the file
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
_CACHE_LIMIT = 1 << 20  # words; the cache is emptied when it grows past this (CLIP's never is)


@functools.lru_cache()
def bytes_to_unicode() -> dict[int, str]:
  """CLIP's reversible map of the 256 byte values to printable characters."""
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) +
        list(range(ord("®"), ord("ÿ") + 1)))
  cs = bs[:]
  n = 0
  for b in range(2**8):
    if b not in bs:
      bs.append(b)
      cs.append(2**8 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def clean(text: str) -> str:
  """open_clip's clean="lower": ftfy, HTML unescaped twice, whitespace collapsed, lower case."""
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return " ".join(text.split()).strip().lower()


def _get_pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
  return set(zip(word[:-1], word[1:]))


def _read_merges(path: str) -> list[tuple[str, ...]]:
  """The merges open_clip uses from a gzip BPE merges file (first line: a version header)."""
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
  try:
    lines = gzip.decompress(data).decode("utf-8").rstrip("\n").split("\n")
  except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
    raise errors.ConfigError(
        f"BPE vocabulary {path} is not a gzip-compressed UTF-8 BPE merges file ({e}); use "
        "CLIP's bpe_simple_vocab_16e6.txt.gz.") from None
  merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
  bad = next((i for i, m in enumerate(merges, 2) if len(m) != 2), None)
  if "#version" not in lines[0] or not merges or bad is not None:
    where = f"line {bad} is not two symbols" if bad else "no '#version' header or no merges"
    raise errors.ConfigError(
        f"BPE vocabulary {path} is not a BPE merges file ({where}); use CLIP's "
        "bpe_simple_vocab_16e6.txt.gz.")
  return merges


class BpeTokenizer:
  """CLIP BPE: <start_of_text> ids <end_of_text>, truncated to and padded with 0 to max_len."""

  def __init__(self, vocab_path: str | None = None, max_len: int = 77):
    self.vocab_path = vocab_path or DEFAULT_VOCAB
    if not tf.io.gfile.exists(self.vocab_path):
      raise errors.NotFoundError(
          f"BPE vocabulary {self.vocab_path} not found; set config.input.vocab_path to CLIP's "
          "bpe_simple_vocab_16e6.txt.gz (unset: the packaged copy).")
    if max_len < 3:
      raise errors.ConfigError(
          f"max_len={max_len} leaves no room for text between <start_of_text> and <end_of_text>.")
    merges = _read_merges(self.vocab_path)
    byte_encoder = bytes_to_unicode()
    vocab = list(byte_encoder.values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges] + list(SPECIAL_TOKENS)
    self._encoder = dict(zip(vocab, range(len(vocab))))
    if len(self._encoder) != len(vocab):
      raise errors.ConfigError(
          f"BPE vocabulary {self.vocab_path} repeats merges; use CLIP's "
          "bpe_simple_vocab_16e6.txt.gz.")
    self._ranks = dict(zip(merges, range(len(merges))))
    self.vocab_size = len(vocab)
    self.max_len = max_len
    self.sot_id, self.eot_id = (self._encoder[t] for t in SPECIAL_TOKENS)
    self.pad_id = PAD_ID
    self._special = {t: (self._encoder[t],) for t in SPECIAL_TOKENS}
    # str.translate after latin-1 decoding maps each UTF-8 byte to its byte-encoder character.
    self._byte_table = byte_encoder
    self._cache: dict[str, tuple[int, ...]] = {}
    self._pattern = regex.compile(
        "|".join(SPECIAL_TOKENS) +
        r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)

  def _bpe(self, token: str) -> tuple[int, ...]:
    """A byte-encoded word -> its ids, merged exactly as CLIP's SimpleTokenizer.bpe merges."""
    word = tuple(token[:-1]) + (token[-1] + "</w>",)
    pairs = _get_pairs(word)
    if not pairs:
      return (self._encoder[token + "</w>"],)
    ranks = self._ranks
    while True:
      bigram = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
      if bigram not in ranks:
        break
      first, second = bigram
      new_word = []
      i = 0
      while i < len(word):
        try:
          j = word.index(first, i)
        except ValueError:
          new_word.extend(word[i:])
          break
        new_word.extend(word[i:j])
        i = j
        if i < len(word) - 1 and word[i + 1] == second:
          new_word.append(first + second)
          i += 2
        else:
          new_word.append(word[i])
          i += 1
      word = tuple(new_word)
      if len(word) == 1:
        break
      pairs = _get_pairs(word)
    return tuple(self._encoder[piece] for piece in word)

  def encode(self, text: str, limit: int | None = None) -> list[int]:
    """One caption -> its BPE ids without special tokens (the first `limit` of them if set)."""
    ids: list[int] = []
    for match in self._pattern.finditer(clean(text)):
      if limit is not None and len(ids) >= limit:
        break
      word = match.group()
      pieces = self._special.get(word) or self._cache.get(word)
      if pieces is None:
        pieces = self._bpe(word.encode("utf-8").decode("latin-1").translate(self._byte_table))
        if len(self._cache) >= _CACHE_LIMIT:
          self._cache.clear()
        self._cache[word] = pieces
      ids.extend(pieces)
    return ids[:limit]

  def _tokenize_numpy(self, texts: Sequence[str | bytes]) -> np.ndarray:
    out = np.full([len(texts), self.max_len], self.pad_id, np.int32)
    for row, text in zip(out, texts):
      if isinstance(text, bytes):  # from TensorFlow; bytes that are not UTF-8 become U+FFFD
        text = text.decode("utf-8", errors="replace")
      ids = self.encode(text, limit=self.max_len - 2)
      row[: len(ids) + 2] = [self.sot_id, *ids, self.eot_id]
    return out

  def tokenize(self, texts: tf.Tensor) -> tf.Tensor:
    """Strings [b] -> int32 [b, max_len]: graph-compatible, for tf.data (runs Python BPE)."""
    texts = tf.ensure_shape(tf.convert_to_tensor(texts, tf.string), [None])
    ids = tf.numpy_function(self._tokenize_numpy, [texts], tf.int32, stateful=False,
                            name="bpe_tokenize")
    return tf.ensure_shape(ids, [texts.shape[0], self.max_len])

  def __call__(self, texts: list[str]) -> np.ndarray:
    return self._tokenize_numpy(list(texts))
