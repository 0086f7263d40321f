"""Our WordPiece ids equal those of an independent BERT uncased implementation (HF tokenizers)."""

import random

import tensorflow as tf
import tokenizers  # test dependency, pinned in requirements.txt

from flip.data import shapes
from flip.data import tokenizer as tokenizer_lib

PIECES = [
    "Café", "crème brûlée", "naïve", "résumé", "Ångström", "São Paulo", "Straße", "Øresund",
    "東京タワー", "北京烤鸭", "한국어", "Ελληνικά", "Русский", "עברית", "العربية", "हिन्दी",
    "😀", "🍕", "❤️", "👨\u200d👩\u200d👧", "🇫🇷", "ﬁne", "Ｆｕｌｌｗｉｄｔｈ", "ＡＢＣ",
    "e-mail", "foo@bar.com", "$3.50", "20%", "(test)", "[x]", "{y}", "...", "—", "«quoted»",
    "'single'", "\"double\"", "a/b\\c", "#hashtag", "@user", "http://example.com/a?b=c",
    "\u200bzero-width", "tab\there", "new\nline", "UPPER", "MiXeD", "don't", "it's", "x2",
    "1,000,000", "3.14159", "COVID-19", "photo", "of", "a", "the", "dog", "on", "beach",
    "supercalifragilisticexpialidocious", "antidisestablishmentarianism", "İstanbul", "ǅ",
]


def corpus(n: int = 1000) -> list[str]:
  rng = random.Random(0)
  texts = [shapes.render_example("train", i)["captions"][i % 3] for i in range(n // 4)]
  while len(texts) < n:
    words = [rng.choice(PIECES) for _ in range(rng.randint(1, 12))]
    if rng.random() < 0.05:
      words *= 20  # very long text
    sep = rng.choice([" ", " ", " ", "", "  ", ", "])
    texts.append(sep.join(words))
  return texts


def test_wordpiece_ids_match_hf_bert_uncased():
  ours = tokenizer_lib.Tokenizer()
  reference = tokenizers.BertWordPieceTokenizer(
      tokenizer_lib.DEFAULT_VOCAB, lowercase=True, strip_accents=None, clean_text=True,
      handle_chinese_chars=True)
  texts = corpus()
  assert len(texts) >= 1000
  got = ours.wordpieces(tf.constant(texts)).to_list()
  mismatches = [(t, g, r.ids) for t, g, r in
                zip(texts, got, reference.encode_batch(texts, add_special_tokens=False))
                if g != r.ids]
  assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, e.g. {mismatches[:3]}"
