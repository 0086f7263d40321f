"""CLIP BPE tokenizer: the same ids as open_clip.tokenize, in Python and inside tf.data."""

import gzip
import importlib.util
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from flip import errors
from flip.data import bpe

# Importing open_clip (torchvision) after TensorFlow crashes the process, so the reference ids come
# from a separate interpreter. It loads only open_clip/tokenizer.py, where open_clip.tokenize is
# defined, which is faster than importing the whole package.
_REFERENCE = """
import importlib.util, json, os, sys
import numpy as np
path = os.path.join(os.path.dirname(importlib.util.find_spec("open_clip").origin), "tokenizer.py")
spec = importlib.util.spec_from_file_location("open_clip_tokenizer", path)
open_clip_tokenizer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(open_clip_tokenizer)
request = json.load(sys.stdin)
np.savez(request["out"], **{str(n): open_clip_tokenizer.tokenize(request["texts"], n).numpy()
                            for n in request["lengths"]})
"""

WORDS = ("a photo of the dog cat red blue circle square man woman riding horse beach sunset "
         "city street at night in on with two three small large old new playing ball table "
         "kitchen mountain river bicycle airplane sky tree flowers unbelievably antidisestablish"
         "mentarianism").split()
FRAGMENTS = [
    # accents, diacritics (composed and combining), case mappings
    "café", "naïve", "Ångström", "façade", "Zoë", "crème brûlée", "cafe\u0301", "Tiếng Việt",
    "İstanbul", "Straße", "ΟΔΟΣ", "Ελληνικά", "ǅemal", "ﬁne ﬂour", "ＦＵＬＬ ｗｉｄｔｈ",
    # CJK, Arabic, other scripts
    "東京タワーの夜景", "北京烤鸭", "한국어 문장", "ｶﾀｶﾅ", "مرحبا بالعالم", "שלום", "नमस्ते",
    "สวัสดี", "Привет, мир",
    # emoji, skin tones, ZWJ sequences, flags, keycaps
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇯🇵", "1️⃣", "👩🏿‍💻", "🤷‍♂️",
    # punctuation runs
    "!!!", "?!?!", "...", "---", "***", "(((", "#$%&", "«»", "“quoted”", "—", "!?", "!)", "@_@",
    # numbers
    "1234", "3.14", "2,000", "١٢٣", "½", "x²", "Ⅻ", "0.5mm", "1st",
    # apostrophes and contractions
    "it's", "don't", "they're", "we've", "I'm", "you'll", "he'd", "IT'S", "DON'T", "it’s",
    "'s", "rock'n'roll", "o'clock",
    # HTML entities (also doubly escaped)
    "&amp;", "&#39;", "&quot;hi&quot;", "&lt;b&gt;", "&amp;amp;", "&nbsp;", "&#x1F600;",
    "&eacute;", "&amp;#39;", "AT&T", "&copy",
    # mojibake that ftfy fixes
    "cafÃ©", "Ã¼ber", "â€œquotedâ€\x9d", "Ã©tÃ©", "Itâ€™s", "ðŸ˜€", "Ã¢â‚¬â„¢",
    # the special tokens, literally
    "<start_of_text>", "<end_of_text>", "<START_OF_TEXT>", "x<end_of_text>y", "< end_of_text >",
    "<start_of_text", "!!<end_of_text>", "<start_of_text><end_of_text>",
    # control and invisible characters
    "\x00", "\x1b[31m", "zero\u200bwidth", "\ufeffbom", "soft\u00adhyphen", "\u2028",
]
SEPARATORS = [" ", " ", " ", "  ", "\t", "\n", "\r\n", " \t \n ", "\u00a0", "\u3000", ""]
FIXED = [
    "", " ", "\t\n  \r", "A Photo of a RED circle", "a photo of a cat", "word " * 100,
    "a" * 300, "東京" * 60, "😀" * 40, "!" * 200, "&amp;" * 30, "<end_of_text>" * 90,
    " ".join(WORDS) * 3, "Hello,\tworld!\n\nHow   are you?", "   leading and trailing   ",
    'she said "wow!", then left',
]


def _random_text(rng: random.Random) -> str:
  kind = rng.random()
  if kind < 0.05:  # random code points, surrogates excluded
    points = [rng.choice([rng.randrange(0x20, 0x250), rng.randrange(0x250, 0xD800),
                          rng.randrange(0xE000, 0x30000)]) for _ in range(rng.randrange(1, 30))]
    return "".join(map(chr, points))
  parts = []
  for _ in range(rng.randrange(1, 18 if kind < 0.9 else 90)):
    part = rng.choice(FRAGMENTS) if rng.random() < 0.4 else rng.choice(WORDS)
    if rng.random() < 0.2:
      part = part.capitalize() if rng.random() < 0.5 else part.upper()
    parts.append(part + rng.choice(SEPARATORS))
  return "".join(parts)


@pytest.fixture(scope="module")
def texts():
  rng = random.Random(0)
  return FIXED + FRAGMENTS + [_random_text(rng) for _ in range(1200)]


@pytest.fixture(scope="module")
def reference(texts, tmp_path_factory):
  """open_clip.tokenize(texts, context_length=n) for n = 77 and 32, computed without TensorFlow."""
  if importlib.util.find_spec("open_clip") is None:
    pytest.skip("open_clip is not installed")
  out = str(tmp_path_factory.mktemp("bpe") / "reference.npz")
  env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
  subprocess.run([sys.executable, "-c", _REFERENCE], check=True, env=env,
                 input=json.dumps({"texts": texts, "lengths": [77, 32], "out": out}), text=True)
  with np.load(out) as ids:
    return {77: ids["77"], 32: ids["32"]}


@pytest.fixture(scope="module")
def tok():
  return bpe.BpeTokenizer()


def _mismatches(ids, want, texts):
  return [(texts[i], ids[i].tolist(), want[i].tolist())
          for i in np.flatnonzero((ids != want).any(axis=1))[:3]]


def test_attributes_and_known_ids(tok):
  assert (tok.vocab_size, tok.sot_id, tok.eot_id, tok.pad_id) == (49408, 49406, 49407, 0)
  assert tok.vocab_path == bpe.DEFAULT_VOCAB and tok.max_len == 77
  ids = tok(["a photo of a cat", "<end_of_text>", ""])
  assert ids.shape == (3, 77) and ids.dtype == np.int32
  assert ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]
  assert ids[1, :4].tolist() == [49406, 49407, 49407, 0]
  assert ids[2, :2].tolist() == [49406, 49407] and (ids[:, 8:] == 0).all()
  # Id 0 is both padding and "!" inside a word (here '!"' of '"wow!",').
  assert tok.encode('she said "wow!", then left') == [1043, 1946, 257, 2781, 0, 4332, 1594, 1823]


def test_truncates_keeping_end_of_text(tok):
  ids = tok(["word " * 100])[0]
  assert ids[0] == tok.sot_id and ids[-1] == tok.eot_id and (ids[1:-1] != tok.eot_id).all()


def test_same_ids_as_open_clip(tok, texts, reference):
  assert len(texts) >= 1000
  ids = tok(texts)
  assert ids.dtype == np.int32 and not _mismatches(ids, reference[77], texts)
  assert (ids[:, -1] == tok.eot_id).any() and (ids[:, -1] == 0).any()  # some truncated, some not


def test_same_ids_as_open_clip_in_tf_data(tok, texts, reference):
  ds = tf.data.Dataset.from_tensor_slices(texts).batch(64).map(tok.tokenize, num_parallel_calls=2)
  assert ds.element_spec.shape.as_list() == [None, 77] and ds.element_spec.dtype == tf.int32
  ids = np.concatenate(list(ds.as_numpy_iterator()))
  assert not _mismatches(ids, reference[77], texts)


def test_other_max_len(texts, reference):
  short = bpe.BpeTokenizer(max_len=32)
  assert not _mismatches(short(texts), reference[32], texts)
  ds = tf.data.Dataset.from_tensor_slices(texts).batch(100).map(short.tokenize)
  assert ds.element_spec.shape.as_list() == [None, 32]
  assert not _mismatches(np.concatenate(list(ds.as_numpy_iterator())), reference[32], texts)


def test_missing_vocab_file_is_a_clear_error(tmp_path):
  with pytest.raises(errors.NotFoundError, match="config.input.vocab_path") as e:
    bpe.BpeTokenizer(str(tmp_path / "nope.txt.gz"))
  assert "\n" not in str(e.value) and isinstance(e.value, FileNotFoundError)


@pytest.mark.parametrize("content", [
    b"i n\nt h\n",
    gzip.compress(b"\xff\xfe not utf-8"),
    gzip.compress(b"[PAD]\n[UNK]\nhello\n"),
    gzip.compress(b"#version: 0.2\ni n\nt h e\n"),
    gzip.compress(b"#version: 0.2\n"),
    gzip.compress(b"#version: 0.2\ni n\ni n\n"),
], ids=["not_gzip", "not_utf8", "word_list", "not_a_pair", "no_merges", "repeated_merge"])
def test_bad_vocab_file_is_a_config_error(tmp_path, content):
  bad = tmp_path / "bad.txt.gz"
  bad.write_bytes(content)
  with pytest.raises(errors.ConfigError, match="bpe_simple_vocab_16e6"):
    bpe.BpeTokenizer(str(bad))


def test_max_len_too_small_is_a_config_error():
  with pytest.raises(errors.ConfigError, match="max_len=2"):
    bpe.BpeTokenizer(max_len=2)
