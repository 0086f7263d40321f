"""Converts captioned images into the webdataset or TFRecord shards the trainer reads.

  python tools/make_shards.py --images_dir=DIR --output_dir=OUT [--format=wds|tfrecord]
  python tools/make_shards.py --csv=captions.tsv --output_dir=OUT [--resize=256]

Input is either a folder searched recursively for images (jpg, jpeg, png, webp, bmp, gif, tif,
tiff), each captioned by the text file beside it with the same stem (`cat.jpg` + `cat.txt`), or a
CSV/TSV of `image_path<TAB>caption` rows (comma-separated for `.csv` files unless --delimiter says
otherwise; a header row such as `image_path,caption` or `filepath,title` is detected and skipped;
relative paths are relative to the CSV's folder).

Every image is decoded once with PIL; unreadable images, missing files and empty captions are
skipped, counted and listed in the summary and in OUT/stats.json. JPEG, PNG and WebP files are
stored byte for byte (TFRecords: JPEG only, under the feature `jpg`, as the released FLIP code
reads); other formats, and every image when --resize is given, are re-encoded as JPEG (quality 95).
Samples get img2dataset's keys (shard number, then index in the shard). The summary ends with the
--config.input.data value that trains on the shards.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import io
import json
import os
import random
import re
from typing import Callable, Iterable, Iterator

from absl import app
from absl import flags
from absl import logging

from flip import hostmem

hostmem.reexec_with_huge_pages()  # first: the restart (flip/hostmem.py) before JAX and TF load

from PIL import Image
import tensorflow as tf

from flip import cli
from flip import errors
from flip.data import shard_writer as shard_writer_lib

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# PIL formats stored as they are (webdataset) and the extension each gets.
COPIED_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
JPEG_QUALITY = 95
# Header names recognised in a CSV's first row.
IMAGE_COLUMNS = ("image_path", "filepath", "file_path", "image", "img", "img_path", "path",
                 "filename", "file_name", "file", "image_file", "url")
CAPTION_COLUMNS = ("caption", "title", "text", "txt", "description", "alt", "alt_text", "label")
SHOWN_PER_REASON = 5  # Skipped items listed per reason in the summary.


@dataclasses.dataclass(frozen=True)
class Sample:
  image_path: str
  caption: str


class Skipped(Exception):
  """A sample left out of the shards, with the reason counted in the summary."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(reason, detail)
    self.reason, self.detail = reason, detail


class Skips:
  """Counts skipped samples by reason and keeps the first few of each for the summary."""

  def __init__(self):
    self.counts: collections.Counter[str] = collections.Counter()
    self.examples: dict[str, list[str]] = collections.defaultdict(list)

  def add(self, reason: str, item: str) -> None:
    self.counts[reason] += 1
    if len(self.examples[reason]) < SHOWN_PER_REASON:
      self.examples[reason].append(item)


def _read_caption_file(path: str) -> str:
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
  try:
    return data.decode("utf-8-sig").strip()
  except UnicodeDecodeError as e:
    raise Skipped("caption_not_utf8", f"{path}: {e}") from e


def find_images(images_dir: str, skips: Skips) -> list[Sample]:
  """Every image under images_dir (sorted) with the caption of its same-stem .txt file."""
  if not tf.io.gfile.isdir(images_dir):
    raise errors.ConfigError(
        f"--images_dir {images_dir} is not a directory; point it at the folder "
        "holding the images and their .txt captions.")
  samples = []
  for folder, _, files in tf.io.gfile.walk(images_dir):
    names = set(files)
    for name in sorted(files):
      stem, ext = os.path.splitext(name)
      if ext.lower() not in IMAGE_EXTENSIONS:
        continue
      path = os.path.join(folder, name)
      if stem + ".txt" not in names:
        skips.add("no_caption_file", path)
        continue
      try:
        samples.append(Sample(path, _read_caption_file(os.path.join(folder, stem + ".txt"))))
      except Skipped as e:
        skips.add(e.reason, e.detail)
  return sorted(samples, key=lambda s: s.image_path)


def _header_columns(row: list[str]) -> tuple[int, int] | None:
  """(image column, caption column) if the row is a header naming both, else None."""
  names = [field.strip().lower() for field in row]
  image = next((i for i, n in enumerate(names) if n in IMAGE_COLUMNS), None)
  caption = next((i for i, n in enumerate(names) if n in CAPTION_COLUMNS), None)
  if image is None or caption is None or image == caption:
    return None
  return image, caption


def read_csv(csv_path: str, skips: Skips, delimiter: str | None = None) -> list[Sample]:
  """The (image path, caption) rows of a CSV/TSV; paths made relative to the file's folder.

  The delimiter defaults to a comma for `.csv` files and a tab otherwise. Without a header the
  first column is the image and the rest of the row the caption (so unquoted delimiters inside a
  caption survive); with a header the named columns are used.
  """
  if not tf.io.gfile.exists(csv_path) or tf.io.gfile.isdir(csv_path):
    raise errors.ConfigError(
        f"--csv {csv_path} does not exist or is not a file; give the path of a "
        "file of image_path<TAB>caption rows.")
  if delimiter is None:
    delimiter = "," if csv_path.lower().endswith(".csv") else "\t"
  base = os.path.dirname(csv_path)
  with tf.io.gfile.GFile(csv_path, "rb") as f:
    try:
      text = f.read().decode("utf-8-sig")
    except UnicodeDecodeError as e:
      raise errors.ConfigError(f"--csv {csv_path} is not UTF-8 text ({e}); convert it, e.g. with "
                               "`iconv -f latin1 -t utf-8`.") from e
  quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
  rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
  samples, columns, first = [], None, True
  for row in rows:
    if not any(field.strip() for field in row):
      continue
    if first:
      first, columns = False, _header_columns(row)
      if columns is not None:
        continue
    if len(row) <= (max(columns) if columns else 1):
      skips.add("malformed_row", f"{csv_path}:{rows.line_num}: {delimiter.join(row)[:80]!r}")
      continue
    if columns:
      path, caption = row[columns[0]], row[columns[1]]
    else:
      path, caption = row[0], delimiter.join(row[1:])
    path = path.strip()
    if not (os.path.isabs(path) or "://" in path):
      path = os.path.join(base, path)
    samples.append(Sample(path, caption.strip()))
  return samples


def _flatten(image: Image.Image) -> Image.Image:
  """The image as RGB or grayscale, transparency flattened onto white."""
  if image.mode in ("RGB", "L"):
    return image
  if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
    rgba = image.convert("RGBA")
    flat = Image.new("RGB", rgba.size, (255, 255, 255))
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat
  return image.convert("RGB")


def _to_jpeg(image: Image.Image) -> bytes:
  image = _flatten(image)
  out = io.BytesIO()
  image.save(out, "JPEG", quality=JPEG_QUALITY)
  return out.getvalue()


def _resize_short_side(image: Image.Image, size: int) -> Image.Image:
  w, h = image.size
  scale = size / min(w, h)
  return image.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                      Image.Resampling.BICUBIC)


def encode_image(path: str, fmt: str = "wds", resize: int | None = None,
                 resize_only_if_bigger: bool = False) -> tuple[bytes, str]:
  """(bytes to store, extension) for an image file; raises Skipped if it is missing or unreadable.

  The file is decoded fully once (PIL's verify() alone passes truncated JPEGs).
  """
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      data = f.read()
  except tf.errors.NotFoundError as e:
    raise Skipped("missing_file", path) from e
  except (tf.errors.OpError, OSError) as e:  # a folder, no permission, ...
    raise Skipped("unreadable_image", f"{path}: {e}") from e
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      if resize and not (resize_only_if_bigger and min(image.size) <= resize):
        return _to_jpeg(_resize_short_side(_flatten(image), resize)), "jpg"
      ext = COPIED_FORMATS.get(image.format)
      if ext == "jpg" or (ext and fmt == "wds"):
        return data, ext
      return _to_jpeg(image), "jpg"
  except Image.UnidentifiedImageError as e:
    raise Skipped("unreadable_image", f"{path}: not an image format PIL knows") from e
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
    raise Skipped("unreadable_image", f"{path}: {type(e).__name__}: {e}") from e


def _ordered_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
  """fn over items in a thread pool, results (or raised exceptions) in order, bounded memory."""
  if workers <= 1:
    for item in items:
      try:
        yield fn(item)
      except Skipped as e:
        yield e
    return
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= 4 * workers:
        yield _result(pending.popleft())
    while pending:
      yield _result(pending.popleft())


def _result(future: concurrent.futures.Future):
  try:
    return future.result()
  except Skipped as e:
    return e


def _existing_shards(output_dir: str) -> list[str]:
  if not tf.io.gfile.isdir(output_dir):
    return []
  return sorted(os.path.join(output_dir, n) for n in tf.io.gfile.listdir(output_dir)
                if re.fullmatch(r"\d{5}\.(tar|tfrecord)", n))


def data_spec(output_dir: str, fmt: str, shards: int) -> str:
  """The config.input.data value that reads the shards written."""
  if fmt == "tfrecord":
    return f"tfrecord:{output_dir}/*.tfrecord"
  if shards == 1:
    return f"wds:{output_dir}/00000.tar"
  return f"wds:{output_dir}/{{00000..{shards - 1:05d}}}.tar"


def convert(samples: Iterable[Sample | tuple[str, str]], output_dir: str, fmt: str = "wds",
            samples_per_shard: int = 10_000, resize: int | None = None,
            resize_only_if_bigger: bool = False, shuffle: bool = True, seed: int = 0,
            workers: int = 1, skips: Skips | None = None, overwrite: bool = False) -> dict:
  """Writes the samples as shards; returns (and saves as output_dir/stats.json) the counts.

  skips carries samples already left out while listing the input, so they are reported too.
  """
  if fmt not in shard_writer_lib.FORMATS:
    raise errors.ConfigError(f"Unknown --format {fmt!r}; choose one of "
                             f"{', '.join(shard_writer_lib.FORMATS)}.")
  if resize is not None and resize < 1:
    raise errors.ConfigError(
        f"--resize={resize} must be a positive number of pixels (or left unset).")
  old = _existing_shards(output_dir)
  if old and not overwrite:
    raise errors.ConfigError(
        f"--output_dir {output_dir} already holds {len(old)} shards ({old[0]}, ...); "
        "choose an empty directory or pass --overwrite to replace them.")
  for path in old:
    tf.io.gfile.remove(path)
  skips = skips or Skips()
  samples = [s if isinstance(s, Sample) else Sample(*s) for s in samples]
  if shuffle:
    random.Random(seed).shuffle(samples)
  kept = []
  for s in samples:
    if s.caption.strip():
      kept.append(s)
    else:
      skips.add("empty_caption", s.image_path)

  def encode(sample: Sample) -> tuple[Sample, bytes, str]:
    return (sample, *encode_image(sample.image_path, fmt, resize, resize_only_if_bigger))

  with shard_writer_lib.ShardWriter(output_dir, fmt, samples_per_shard) as writer:
    for result in _ordered_map(encode, kept, workers):
      if isinstance(result, Skipped):
        skips.add(result.reason, result.detail)
        continue
      sample, data, ext = result
      writer.write(writer.next_key(), data, sample.caption.strip(), ext,
                   meta={"image_path": sample.image_path})
      if writer.count % 10_000 == 0:
        logging.info("%d samples written", writer.count)
    written = writer.count
  shards = writer.close()
  stats = {
      "written": written, "skipped": dict(sorted(skips.counts.items())),
      "skipped_examples": {k: v for k, v in sorted(skips.examples.items())},
      "shards": len(shards), "format": fmt, "samples_per_shard": samples_per_shard,
      "resize": resize, "data": data_spec(output_dir, fmt, len(shards)) if shards else None,
  }
  with tf.io.gfile.GFile(f"{output_dir.rstrip('/')}/stats.json", "w") as f:
    json.dump(stats, f, indent=2, ensure_ascii=False)
  return stats


def summary(stats: dict, output_dir: str) -> str:
  shards = f"{stats['shards']} {stats['format']} shard{'' if stats['shards'] == 1 else 's'}"
  lines = [f"Wrote {stats['written']} samples in {shards} to {output_dir} (counts in stats.json)."]
  skipped = stats["skipped"]
  if skipped:
    lines.append(f"Skipped {sum(skipped.values())}:")
    for reason, count in skipped.items():
      lines.append(f"  {reason}: {count}")
      lines += [f"    {item}" for item in stats["skipped_examples"].get(reason, [])]
  if stats["data"]:
    lines.append(f"Train on them with: --config.input.data='{stats['data']}'")
  return "\n".join(lines)


def define_flags() -> None:
  """The command-line flags (defined only when run as a script, so tests can import this)."""
  flags.DEFINE_string("images_dir", None, "Folder of images with same-stem .txt captions.")
  flags.DEFINE_string("csv", None, "CSV/TSV of image_path<delimiter>caption rows.")
  flags.DEFINE_string("delimiter", None, "CSV delimiter (default: ',' for .csv, else tab).")
  flags.DEFINE_string("output_dir", None, "Where the shards and stats.json go (gs:// works).")
  flags.DEFINE_enum("format", "wds", list(shard_writer_lib.FORMATS), "Shard format.")
  flags.DEFINE_integer("samples_per_shard", 10_000, "Samples per shard.", lower_bound=1)
  flags.DEFINE_integer("resize", None, "Resize the short side to this many pixels (bicubic) and "
                       "re-encode as JPEG; default: keep the original bytes.", lower_bound=1)
  flags.DEFINE_boolean("resize_only_if_bigger", False, "With --resize: leave smaller images as "
                       "they are instead of upscaling them.")
  flags.DEFINE_boolean("shuffle", True, "Shuffle the sample order (with --seed).")
  flags.DEFINE_integer("seed", 0, "Shuffle seed.")
  flags.DEFINE_integer("workers", min(16, os.cpu_count() or 1), "Threads decoding images.",
                       lower_bound=1)
  flags.DEFINE_boolean("overwrite", False, "Replace shards already in --output_dir.")
  flags.mark_flag_as_required("output_dir")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; pass everything as --flags.")
  f = flags.FLAGS
  if bool(f.images_dir) == bool(f.csv):
    raise app.UsageError("Give exactly one of --images_dir (images with .txt captions) and --csv.")
  output_dir = f.output_dir if "://" in f.output_dir else os.path.abspath(f.output_dir)
  skips = Skips()
  if f.images_dir:
    samples = find_images(f.images_dir, skips)
  else:
    delimiter = f.delimiter.encode().decode("unicode_escape") if f.delimiter else None
    samples = read_csv(f.csv, skips, delimiter)
  stats = convert(samples, output_dir, f.format, f.samples_per_shard, f.resize,
                  f.resize_only_if_bigger, f.shuffle, f.seed, f.workers, skips, f.overwrite)
  print(summary(stats, output_dir))
  if not stats["written"]:
    raise errors.DataError("no sample could be written; see the skip reasons above.")


if __name__ == "__main__":
  define_flags()
  cli.run(main, join=False)
