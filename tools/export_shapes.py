"""Writes part of the embedded flip_shapes data set as plain files: images, captions and a TSV.

python tools/export_shapes.py --output_dir=/tmp/shapes_files --num=4000

The output has the layouts users start from (`images/000123.png` beside `images/000123.txt`, and
`pairs.tsv` with `image_path<TAB>caption` rows), so every input format of the README can be tried
here end to end: tools/make_shards.py turns it into webdataset or TFRecord shards, and the CSV
source reads pairs.tsv directly.
"""

from __future__ import annotations

import os

from absl import flags

from flip import hostmem

hostmem.reexec_with_huge_pages()  # first: the restart (flip/hostmem.py) before JAX and TF load

import tensorflow as tf

from flip import cli
from flip.data import sources

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write.", required=True)
_NUM = flags.DEFINE_integer("num", 4000, "How many examples (from the start of the split).")
_SPLIT = flags.DEFINE_string("split", "train", "flip_shapes split.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: TFDS's).")


def export(output_dir: str, num: int, split: str = "train", data_dir: str | None = None) -> str:
  """Writes the files; returns the TSV's path."""
  images = os.path.join(output_dir, "images")
  os.makedirs(images, exist_ok=True)
  b = sources.builder("flip_shapes", data_dir)
  ds = b.as_dataset(split=f"{split}[:{num}]", shuffle_files=False)
  rows = []
  for i, ex in enumerate(ds.as_numpy_iterator()):
    name = f"{i:06d}"
    caption = ex["captions"][0].decode()
    with open(os.path.join(images, name + ".png"), "wb") as f:
      f.write(tf.io.encode_png(ex["image"]).numpy())
    with open(os.path.join(images, name + ".txt"), "w") as f:
      f.write(caption)
    rows.append(f"images/{name}.png\t{caption}")
  tsv = os.path.join(output_dir, "pairs.tsv")
  with open(tsv, "w") as f:
    f.write("image_path\tcaption\n" + "\n".join(rows) + "\n")
  return tsv


def main(argv):
  del argv
  tsv = export(_OUTPUT_DIR.value, _NUM.value, _SPLIT.value, _DATA_DIR.value)
  print(f"wrote {_NUM.value} images with captions to {_OUTPUT_DIR.value}/images and {tsv}")


if __name__ == "__main__":
  cli.run(main, join=False)
