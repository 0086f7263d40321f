"""Learns a WordPiece vocabulary from a caption corpus, for the trainer's tokenizer.

  python tools/build_vocab.py --captions=captions.txt --vocab_size=30522 --output=vocab.txt
  python tools/build_vocab.py --captions=data.tsv --column=-1 --output=vocab.txt

The captions (one per line, or one column of a TSV/CSV with --column) are normalised exactly as
flip.data.tokenizer normalises text (control characters dropped, lower-cased, accents stripped),
split into words by BERT's rules and fed to tensorflow-text's WordPiece learner. The vocabulary
starts with the reserved tokens [PAD] (id 0, as the trainer requires), [UNK], [CLS], [SEP] and
[MASK]. --vocab_size is a target: the learner's search over piece-count thresholds usually ends
within 5% below it, a small corpus gives fewer tokens, and at the lowest threshold it can end a
little above it. The script prints the size produced and the flags that train with it.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
from typing import Iterable, Iterator

from absl import app
from absl import flags

from flip import hostmem

hostmem.reexec_with_huge_pages()  # first: the restart (flip/hostmem.py) before JAX and TF load

import tensorflow as tf
from tensorflow_text.tools.wordpiece_vocab import bert_vocab_from_dataset as bert_vocab

from flip import cli
from flip import errors
from flip.data import tokenizer as tokenizer_lib

RESERVED_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BATCH = 1024  # Captions normalised and split per tf.data step.


def read_captions(path: str, column: int | None = None, delimiter: str | None = None,
                  skip_header: bool = False, max_lines: int | None = None) -> Iterator[str]:
  """Captions from a text file: whole lines, or field `column` (negative counts from the end).

  The delimiter defaults to a comma for `.csv` files and a tab otherwise. Blank captions and
  rows without the column are left out.
  """
  if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
    raise errors.ConfigError(f"--captions {path} does not exist or is not a file; give a text file "
                             "with one caption per line (or a TSV/CSV with --column).")
  if delimiter is None:
    delimiter = "," if path.lower().endswith(".csv") else "\t"
  with tf.io.gfile.GFile(path, "rb") as f:
    try:
      text = f.read().decode("utf-8-sig")
    except UnicodeDecodeError as e:
      raise errors.ConfigError(f"--captions {path} is not UTF-8 text ({e}); convert it, e.g. with "
                               "`iconv -f latin1 -t utf-8`.") from e
  if column is None:
    rows = ([line] for line in text.splitlines())
    column = 0
  else:
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
  if skip_header:
    next(rows, None)
  captions = (row[column].strip() for row in rows if -len(row) <= column < len(row))
  return itertools.islice((c for c in captions if c), max_lines)


def build_vocab(captions: Iterable[str], vocab_size: int = 30522,
                reserved_tokens: Iterable[str] = RESERVED_TOKENS, lower_thresh: int = 10,
                max_token_length: int = 50) -> list[str]:
  """A WordPiece vocabulary (reserved tokens first) for flip.data.tokenizer.Tokenizer.

  lower_thresh is the smallest count a word piece may have (tensorflow-text's default 10): lower
  it for a small corpus to reach a larger vocabulary.
  """
  reserved = list(reserved_tokens)
  if reserved[:1] != ["[PAD]"] or not {"[UNK]", "[CLS]", "[SEP]"} <= set(reserved):
    raise errors.ConfigError(
        f"reserved_tokens {reserved} must start with [PAD] and contain [UNK], [CLS] "
        "and [SEP]: flip.data.tokenizer.Tokenizer needs them.")
  if vocab_size <= len(reserved):
    raise errors.ConfigError(
        f"vocab_size={vocab_size} leaves no room beyond the {len(reserved)} reserved "
        "tokens; ask for thousands (BERT uses 30522).")
  texts = tf.data.Dataset.from_generator(lambda: iter(captions),
                                         output_signature=tf.TensorSpec([], tf.string))
  texts = texts.batch(BATCH).map(tokenizer_lib.normalize)
  # The text is already lower-cased and accent-stripped as the trainer's tokenizer does it; the
  # learner's own BERT tokenizer only splits words (on whitespace, punctuation, CJK characters).
  vocab = bert_vocab.bert_vocab_from_dataset(
      texts, vocab_size, reserved, bert_tokenizer_params={"lower_case": False},
      learn_params={"lower_thresh": lower_thresh, "max_token_length": max_token_length})
  # A token must fit on one line of the vocabulary file.
  return [token for token in vocab if token and not any(c in token for c in "\r\n")]


def write_vocab(vocab: list[str], path: str) -> None:
  parent = os.path.dirname(path)
  if parent:
    tf.io.gfile.makedirs(parent)
  with tf.io.gfile.GFile(path, "w") as f:
    f.write("".join(token + "\n" for token in vocab))


def define_flags() -> None:
  """The command-line flags (defined only when run as a script, so tests can import this)."""
  flags.DEFINE_string("captions", None, "Text file: one caption per line, or a TSV/CSV.")
  flags.DEFINE_integer("column", None, "With a TSV/CSV: the caption column (0-based; -1 = last). "
                       "Default: every whole line is a caption.")
  flags.DEFINE_string("delimiter", None, "With --column: the delimiter (default: ',' for .csv, "
                      "else tab).")
  flags.DEFINE_boolean("skip_header", False, "Skip the file's first line.")
  flags.DEFINE_integer("max_lines", None, "Read at most this many captions.", lower_bound=1)
  flags.DEFINE_integer("vocab_size", 30522, "Target vocabulary size.", lower_bound=1)
  flags.DEFINE_integer("lower_thresh", 10, "Smallest count of a word piece; lower it for a small "
                       "corpus.", lower_bound=1)
  flags.DEFINE_string("output", None, "Vocabulary file to write, one token per line.")
  flags.mark_flags_as_required(["captions", "output"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; pass everything as --flags.")
  f = flags.FLAGS
  delimiter = f.delimiter.encode().decode("unicode_escape") if f.delimiter else None
  captions = list(read_captions(f.captions, f.column, delimiter, f.skip_header, f.max_lines))
  if not captions:
    raise errors.ConfigError(f"--captions {f.captions} holds no non-empty caption.")
  vocab = build_vocab(captions, f.vocab_size, lower_thresh=f.lower_thresh)
  output = f.output if "://" in f.output else os.path.abspath(f.output)
  write_vocab(vocab, output)
  print(f"Learned {len(vocab)} tokens (target {f.vocab_size}) from {len(captions)} captions; "
        f"wrote {output}.")
  print(f"Train with: --config.input.vocab_path={output} "
        f"--config.model.text.vocab_size={len(vocab)}")


if __name__ == "__main__":
  define_flags()
  cli.run(main, join=False)
