"""Training-data sources: img2dataset webdataset / TFRecord shards, TFDS data sets, CSV/TSV files.

`config.input.data` names one source or several separated by ';', each `FORMAT:LOCATION`,
optionally followed by `?option=value&option=value`:

  wds:/data/laion400m/{00000..41407}.tar        img2dataset webdataset tars ({key}.jpg + {key}.txt)
  tfrecord:gs://bucket/laion/*.tfrecord          img2dataset TFRecords (features `jpg`, `txt`)
  tfds:coco_captions?text_key=captions/text      a TFDS data set with an image and caption(s)
  csv:/data/pairs.tsv                            rows `image_path<TAB>caption` (or ',' in .csv)
  csv:/data/cc3m.csv?image_key=filepath&text_key=title    open_clip's CSV: named columns
  wds:/data/laion/*.tar?weight=0.8; tfds:coco_captions?weight=0.2&text_key=captions/text

Options: `weight` (mixing weight, default 1), `split` and `data_dir` (TFDS), `image_key` and
`text_key` (the feature, file extension or CSV column to read; defaults per format below).

Each source is cut into *units* (files, or for TFDS and CSV even pieces of them) that processes
divide among themselves: process i reads units i, i+P, i+2P, ... A unit is read by
`records(source, unit)` into raw records {key, image (encoded bytes), path (CSV: file to read),
text, problem (why the record is unusable, if known when reading)}; decoding and checking happen
in flip.data.pipeline.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import os
import tarfile
from typing import Iterator

import jax
import tensorflow as tf
import tensorflow_datasets as tfds

from flip import errors
from flip.data import shapes  # noqa: F401  (registers the embedded `flip_shapes` builder)
from flip.data.spec import Source, expand_braces, parse  # noqa: F401  (re-exported)

GENERATED_DATASETS = ("flip_shapes",)
CAPTION_SEPARATOR = "\x1e"  # joins a TFDS example's several captions; one is picked per use
MIN_UNITS = 16  # CSV files are cut into at least this many units (for shuffling)


def list_files(location: str, suffixes: tuple[str, ...]) -> list[str]:
  """The files a location names: brace ranges, globs (also gs://), or a directory's files."""
  files = []
  for pattern in expand_braces(location):
    if tf.io.gfile.isdir(pattern):
      files += [os.path.join(pattern, f) for f in tf.io.gfile.listdir(pattern)
                if any(f.endswith(s) for s in suffixes)]
    elif any(c in pattern for c in "*?["):
      files += tf.io.gfile.glob(pattern)
    elif tf.io.gfile.exists(pattern):
      files.append(pattern)
    else:
      raise errors.NotFoundError(f"Data file {pattern} (from {location!r}) does not exist; check "
                                 "config.input.data.")
  files = sorted(set(files))
  if not files:
    raise errors.NotFoundError(f"No data files match {location!r} (looked for {suffixes}); check "
                               "config.input.data.")
  return files


def builder(dataset: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The TFDS builder, prepared if it is one we generate (no download needed)."""
  try:
    b = tfds.builder(dataset, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise errors.DataError(f"Unknown TFDS data set {dataset!r}: use a TFDS name such as "
                           "flip_shapes (the embedded one) or coco_captions.") from e
  if not b.is_prepared():
    if dataset.split("/")[0].split(":")[0] not in GENERATED_DATASETS:
      raise errors.NotFoundError(
          f"TFDS data set {dataset!r} is not prepared in data_dir={b.data_dir}; download and "
          "prepare it first (tfds build) or point data_dir at it.")
    b.download_and_prepare()
  return b


def feature(features, key: str):
  """A (possibly nested, '/'-separated) feature of a TFDS FeaturesDict, or None."""
  for part in key.split("/"):
    try:
      features = features[part]
    except (KeyError, TypeError):
      return None
    features = getattr(features, "feature", features)  # Sequence({...}) -> its FeaturesDict
  return features


def nested(example, key: str):
  """example["a"]["b"] for key "a/b": a (possibly nested) value of a decoded TFDS example."""
  for part in key.split("/"):
    example = example[part]
  return example


def units(source: Source, num_pieces: int = MIN_UNITS) -> list[str]:
  """The source's units, in a fixed order; TFDS and CSV files are cut into `num_pieces` pieces."""
  if source.format == "wds":
    return list_files(source.location, (".tar", ".tar.gz", ".tgz"))
  if source.format == "tfrecord":
    return list_files(source.location, (".tfrecord", ".tfrec", ".tfrecords"))
  if source.format == "csv":
    paths = list_files(source.location, (".csv", ".tsv", ".txt"))
    for path in paths:
      csv_layout(path, source)  # a header that does not fit the options fails here
    return [f"{path}#{i}/{num_pieces}" for path in paths for i in range(num_pieces)]
  b = builder(source.location, source.data_dir)
  missing = [k for k in (source.image_key, source.text_key) if feature(b.info.features, k) is None]
  if missing:
    raise errors.DataError(f"TFDS data set {source.location!r} has no feature(s) {missing}; its "
                           f"features are {sorted(b.info.features)}. Set image_key/text_key, e.g. "
                           f"tfds:{source.location}?text_key=captions/text.")
  if b.info.file_format != tfds.core.file_adapters.FileFormat.TFRECORD:
    raise errors.DataError(f"TFDS data set {source.location!r} is stored as {b.info.file_format}; "
                           "only TFRecord-backed TFDS data sets are supported (tfds build "
                           "--file_format=tfrecord).")
  try:
    instructions = b.info.splits[source.split].file_instructions
  except (KeyError, ValueError) as e:
    raise errors.DataError(f"TFDS data set {source.location!r} has no split {source.split!r}; its "
                           f"splits are {sorted(b.info.splits)}.") from e
  out = []
  pieces = max(1, -(-num_pieces // max(1, len(instructions))))
  for fi in instructions:
    take = fi.take if fi.take >= 0 else fi.examples_in_shard - fi.skip
    bounds = [fi.skip + take * j // pieces for j in range(pieces + 1)]
    out += [f"{fi.filename}#{lo}#{hi - lo}" for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
  return out


def process_units(all_units: list[str], source: Source, process_index: int | None = None,
                  process_count: int | None = None) -> list[str]:
  """This process's disjoint share of the units: every process_count-th, from process_index."""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if len(all_units) < count:
    raise errors.DataError(
        f"Data source {source.name} has {len(all_units)} file(s) but there are "
        f"{count} processes: each process needs at least one file. Write more, "
        "smaller shards (tools/make_shards.py --samples_per_shard) or use fewer hosts.")
  return all_units[index::count]


# ---------------------------------------------------------------------------------------------
# Reading one unit into raw records.

RECORD_SIGNATURE = {
    "key": tf.TensorSpec([], tf.string),
    "image": tf.TensorSpec([], tf.string),
    "text": tf.TensorSpec([], tf.string),
    "problem": tf.TensorSpec([], tf.string),
}


def _record(key=b"", image=b"", text=b"", problem=b""):
  return {"key": key, "image": image, "text": text, "problem": problem}


def read_tar(path: str, image_exts: tuple[str, ...], text_ext: str) -> Iterator[dict]:
  """Samples of a webdataset tar: consecutive members sharing a key (name up to the first '.')."""
  current, members = None, {}

  def flush():
    if current is None:
      return None
    image = next((members[e] for e in image_exts if e in members), None)
    problem = b"" if image is not None else b"no image member (" + ",".join(
        image_exts).encode() + b")"
    return _record(current.encode(), image or b"", members.get(text_ext, b""), problem)

  try:
    with tf.io.gfile.GFile(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
      for member in tar:
        if not member.isfile():
          continue
        directory, base = os.path.split(member.name)
        stem, _, ext = base.partition(".")
        key = os.path.join(directory, stem)
        if key != current:
          record = flush()
          if record is not None:
            yield record
          current, members = key, {}
        ext = ext.lower()
        if ext in image_exts or ext == text_ext:
          members[ext] = tar.extractfile(member).read()
    record = flush()
  except (tarfile.TarError, OSError, EOFError, tf.errors.OpError) as e:
    record = _record(
        (current or "").encode(), problem=f"unreadable shard ({type(e).__name__}: {e})".encode())
  if record is not None:
    yield record


def read_tfrecord(path: str, image_key: str, text_key: str) -> Iterator[dict]:
  """Samples of an img2dataset TFRecord (features `key`, `jpg`, `txt`), parsed on the host."""
  index = 0
  try:
    for serialized in tf.compat.v1.io.tf_record_iterator(path):
      index += 1
      try:
        features = tf.train.Example.FromString(serialized).features.feature
      except Exception as e:  # noqa: BLE001  (a protobuf DecodeError: one corrupt record)
        yield _record(f"record {index}".encode(), problem=f"corrupt record ({e})".encode())
        continue

      def value(name):
        v = features[name].bytes_list.value if name in features else []
        return v[0] if v else b""

      key = value("key") or f"record {index}".encode()
      image = value(image_key)
      yield _record(key, image, value(text_key), b"" if image else b"no image feature")
  except (tf.errors.OpError, OSError) as e:
    message = getattr(e, "message", str(e))
    yield _record(f"after record {index}".encode(),
                  problem=f"unreadable shard ({type(e).__name__}: {message})".encode())


def _generator_records(fn, unit: tf.Tensor, *args) -> tf.data.Dataset:
  return tf.data.Dataset.from_generator(
      lambda u: fn(u.decode(), *args), args=(unit,), output_signature=RECORD_SIGNATURE)


CSV_IMAGE_COLUMNS = ("filepath", "file_path", "image_path", "imagepath", "image", "path",
                     "file_name", "filename", "file", "url", "image_url")
CSV_TEXT_COLUMNS = ("title", "caption", "captions", "text", "txt", "description")


@dataclasses.dataclass(frozen=True)
class CsvLayout:
  """How a CSV/TSV file's rows are read: its delimiter, and with a header row naming the
  columns, the image and caption columns' indices (None: no header, split at the first
  delimiter)."""
  delimiter: str
  image_column: int | None = None
  text_column: int | None = None
  names: tuple[str, ...] = ()


@functools.lru_cache(maxsize=4096)  # each file's pieces are read every epoch: one look each
def csv_layout(path: str, source: Source) -> CsvLayout:
  """The layout of one CSV/TSV file of `source`, from its first row.

  With image_key/text_key set (open_clip's --csv-img-key/--csv-caption-key, e.g.
  `?image_key=filepath&text_key=title`), the first row must name those columns. Without them, a
  first row is a header when it names a known image column (filepath, image_path, url, ...) and
  a known caption column (title, caption, text, ...), or starts with a known image column name;
  its image column is the first known image name, its caption column the first known caption
  name or else the second column. Without a header, a row is split at its first delimiter
  (paths rarely hold one, captions often do).
  """
  delimiter = "," if path.lower().endswith(".csv") else "\t"
  with tf.io.gfile.GFile(path, "r") as f:
    first = f.readline()
  header = next(csv.reader([first.rstrip("\r\n")], delimiter=delimiter), [])
  names = [h.strip().lower() for h in header]
  keys = (source.image_key, source.text_key)
  if any(keys):
    missing = [k for k in keys if k and k.lower() not in names]
    if missing or not all(keys):
      raise errors.DataError(
          f"CSV file {path} of data source {source.name}: its first row {header} must name the "
          f"columns image_key={source.image_key!r} and text_key={source.text_key!r}"
          f"{' (missing: ' + str(missing) + ')' if missing else ''}. Set both to the header's "
          "column names, or leave both out for files without a header.")
    return CsvLayout(delimiter, names.index(source.image_key.lower()),
                     names.index(source.text_key.lower()), tuple(names))
  image = next((i for i, n in enumerate(names) if n in CSV_IMAGE_COLUMNS), None)
  text = next((i for i, n in enumerate(names) if n in CSV_TEXT_COLUMNS), None)
  if image is None or (text is None and image != 0):
    return CsvLayout(delimiter)  # no header
  if text is None:
    if len(names) < 2:
      raise errors.DataError(f"CSV file {path} of data source {source.name} has a header "
                             f"{header} with no caption column: add one (e.g. 'caption').")
    text = 1 if image != 1 else 0
  return CsvLayout(delimiter, image, text, tuple(names))


def read_csv(unit: str, image_key: str, text_key: str) -> Iterator[dict]:
  """Rows of one piece (`path#i/n`: every n-th row from row i) of a CSV/TSV file as records
  {key (path:line), image (the image's path; relative ones are relative to the file's
  directory), text}; see csv_layout for the columns."""
  path, _, piece = unit.rpartition("#")
  i, n = (int(v) for v in piece.split("/"))
  layout = csv_layout(path, Source("csv", path, image_key=image_key, text_key=text_key))
  directory = os.path.dirname(path)

  def full(image_path: str) -> str:
    if not image_path or image_path.startswith("/") or "://" in image_path:
      return image_path
    return os.path.join(directory, image_path)

  with tf.io.gfile.GFile(path, "r") as f:
    if layout.image_column is None:
      for j, line in enumerate(f):
        line = line.rstrip("\r\n")
        if j % n != i or not line.strip():
          continue
        image_path, _, text = line.partition(layout.delimiter)
        if len(text) >= 2 and text[0] == text[-1] == '"':
          text = text[1:-1].replace('""', '"')
        yield _record(f"{path}:{j + 1}".encode(), full(image_path.strip()).encode(),
                      text.encode())
      return
    rows = csv.reader(f, delimiter=layout.delimiter)
    next(rows, None)  # the header
    for j, row in enumerate(rows, start=1):
      if j % n != i or not any(field.strip() for field in row):
        continue
      key = f"{path}:{rows.line_num}".encode()
      if len(row) <= max(layout.image_column, layout.text_column):
        yield _record(key, problem=f"row has {len(row)} column(s), fewer than the header's "
                      f"{len(layout.names)}".encode())
        continue
      yield _record(key, full(row[layout.image_column].strip()).encode(),
                    row[layout.text_column].encode())


def _tfds_records(source: Source, unit: tf.Tensor) -> tf.data.Dataset:
  features = builder(source.location, source.data_dir).info.features
  parts = tf.strings.split(unit, "#")
  filename = tf.strings.reduce_join(parts[:-2], separator="#")
  skip, take = (tf.strings.to_number(parts[-2], tf.int64), tf.strings.to_number(parts[-1], tf.int64))
  decoders = {source.image_key.split("/")[0]: tfds.decode.SkipDecoding()} \
      if "/" not in source.image_key else None

  def parse_example(index, serialized):
    ex = features.deserialize_example(serialized, decoders=decoders)
    image, text = nested(ex, source.image_key), nested(ex, source.text_key)
    if image.dtype != tf.string:
      image = tf.io.encode_png(image)
    if text.shape.rank:  # several captions: kept joined, one is picked in the pipeline
      text = tf.strings.reduce_join(text, separator=CAPTION_SEPARATOR)
    key = tf.strings.regex_replace(filename, r".*/", "") + ":" + tf.strings.as_string(index)
    return {"key": key, "image": image, "text": text, "problem": tf.constant("")}

  return (tf.data.TFRecordDataset(filename).skip(skip).take(take).enumerate(skip)
          .map(traced(parse_example)))



def traced(fn):
  """`fn`, for a tf.data transformation (map, flat_map, interleave, scan), traced as written:
  the pipeline's functions branch with tf.cond on tensors and in Python only on static shapes,
  dtypes and options, so AutoGraph's source rewrite, seconds of every run's start-up, is skipped."""
  return tf.autograph.experimental.do_not_convert(fn)


def records(source: Source, unit: tf.Tensor) -> tf.data.Dataset:
  """Raw records of one unit (a string tensor from `units`), in file order."""
  if source.format == "wds":
    exts = tuple(e.strip().lower() for e in source.image_key.split(","))
    return _generator_records(read_tar, unit, exts, source.text_key)
  if source.format == "tfrecord":
    return _generator_records(read_tfrecord, unit, source.image_key, source.text_key)
  if source.format == "csv":
    return _generator_records(read_csv, unit, source.image_key, source.text_key)
  return _tfds_records(source, unit)
