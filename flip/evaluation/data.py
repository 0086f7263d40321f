"""Evaluation splits: TFDS splits and CLIP_benchmark's webdataset sets, streamed in chunks.

`open_split(dataset, split, ...)` reads either
  - a TFDS data set by name (`imagenet2012`, `coco_captions`, `flip_shapes`, ...), or
  - `wds:<root>`: a set in the webdataset layout that LAION's CLIP_benchmark publishes its
    evaluation sets in (e.g. the `clip-benchmark/wds_imagenet1k` data set), local or gs://:

      <root>/classnames.txt                          one class name per line (classification)
      <root>/zeroshot_classification_templates.txt   one prompt per line, "{c}" for the class
      <root>/dataset_type.txt                        "retrieval" for caption sets (optional)
      <root>/<split>/nshards.txt                     the number of shards (optional)
      <root>/<split>/0.tar, 1.tar, ...               <key>.webp|png|jpg|jpeg with <key>.cls (the
                                                     class index) or <key>.txt (captions, one a line)

Every split yields chunks {"image": centre-cropped, normalised f32 [n, S, S, 3], "label": int
[n] (with `label_key`), "captions": str [n, captions_per_image] (with `text_key`; a TFDS caption
feature that is a single string stays [n])}. Every process reads the whole split in the same
order (the embedder shards each batch). Splits whose images fit in CACHE_BYTES stay in memory after
the first pass. Progress (done/total, images/s, ETA) is logged while a split is read.
"""

from __future__ import annotations

import os
import re
import tarfile
import time
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from flip import errors
from flip.data import pipeline
from flip.data import sources

CACHE_BYTES = 1 << 30  # splits whose images fit in this many bytes are kept in memory
PROGRESS_EVERY_S = 30.0
WDS_PREFIX = "wds:"
WDS_IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")


def open_split(dataset: str, split: str, data_dir: str | None, image_size: int, *,
               image_key: str = "image", label_key: str | None = None,
               text_key: str | None = None, max_examples: int | None = None,
               captions_per_image: int = 5) -> "Split":
  """The split of a TFDS data set, or of a CLIP_benchmark webdataset set (`wds:<root>`)."""
  if dataset.startswith(WDS_PREFIX):
    return WdsSplit(dataset[len(WDS_PREFIX):], split, image_size, labels=label_key is not None,
                    captions=text_key is not None, max_examples=max_examples,
                    captions_per_image=captions_per_image)
  return TfdsSplit(dataset, split, data_dir, image_key, image_size, label_key=label_key,
                   text_key=text_key, max_examples=max_examples,
                   captions_per_image=captions_per_image)


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
  return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
  """Logs `name: done/total images, images/s, ETA` at most every PROGRESS_EVERY_S (process 0)."""

  def __init__(self, name: str, total: int, every_s: float = PROGRESS_EVERY_S):
    self.name, self.total, self.every_s = name, total, every_s
    self.done = 0
    self.start = self.last = time.perf_counter()

  def update(self, n: int) -> None:
    self.done += n
    now = time.perf_counter()
    if now - self.last >= self.every_s and self.done < self.total:
      self.last = now
      rate = self.done / max(now - self.start, 1e-9)
      if jax.process_index() == 0:
        logging.info("%s: %d/%d images, %.1f images/s, ETA %s", self.name, self.done, self.total,
                     rate, format_duration((self.total - self.done) / max(rate, 1e-9)))


class Split:
  """What both kinds of split share: chunks (cached when small), all(), class names, templates."""

  name: str
  num_examples: int
  image_size: int

  def __init__(self):
    self._cache = None
    self._cacheable = self.num_examples * self.image_size ** 2 * 3 * 4 <= CACHE_BYTES

  def _dataset(self, chunk: int) -> tf.data.Dataset:
    raise NotImplementedError

  def _finished(self, count: int) -> None:
    """Called after a full pass that produced `count` examples."""

  def chunks(self, chunk: int = 1024) -> Iterator[dict[str, np.ndarray]]:
    """The split in order, `chunk` examples at a time (the last one shorter). Progress counts an
    example once the consumer asks for the next chunk, so it includes the consumer's work."""
    progress = Progress(f"Evaluating {self.name}", self.num_examples)
    if self._cache is not None:
      for i in range(0, self.num_examples, chunk):
        yield {k: v[i:i + chunk] for k, v in self._cache.items()}
        progress.update(min(chunk, self.num_examples - i))
      return
    batches, count = [], 0
    for batch in self._dataset(chunk).as_numpy_iterator():
      if self._cacheable:
        batches.append(batch)
      yield batch
      count += len(batch["image"])
      progress.update(len(batch["image"]))
    self._finished(count)
    if self._cacheable and batches:
      self._cache = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

  def all(self) -> dict[str, np.ndarray]:
    parts = list(self.chunks())
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def class_names(self) -> list[str]:
    raise NotImplementedError

  def templates(self) -> tuple[str, ...] | None:
    """The set's own zero-shot prompt templates ("{}" for the class), if it ships them."""
    return None


def _pad_captions(value: tf.Tensor, n: int) -> tf.Tensor:
  value = tf.pad(value[:n], [[0, n - tf.minimum(tf.shape(value)[0], n)]])
  return tf.ensure_shape(value, [n])


class TfdsSplit(Split):
  """A TFDS split with an image feature and a label (`label_key`) and/or caption(s) (`text_key`;
  a feature with several values per example is cut or padded with "" to captions_per_image)."""

  def __init__(self, dataset: str, split: str, data_dir: str | None, image_key: str,
               image_size: int, *, label_key: str | None = None, text_key: str | None = None,
               max_examples: int | None = None, captions_per_image: int = 5):
    self.builder = sources.builder(dataset, data_dir)
    self.name = f"{dataset}/{split}"
    self.fields = {out: key for out, key in (("label", label_key), ("captions", text_key)) if key}
    missing = [k for k in (image_key, *self.fields.values())
               if sources.feature(self.builder.info.features, k) is None]
    if missing:
      raise errors.DataError(f"Evaluation data set {dataset!r} has no feature(s) {missing}; its "
                             f"features are {sorted(self.builder.info.features)}.")
    try:
      total = self.builder.info.splits[split].num_examples
    except (KeyError, ValueError) as e:
      raise errors.DataError(f"Evaluation data set {dataset!r} has no split {split!r}; its splits "
                             f"are {sorted(self.builder.info.splits)}.") from e
    if not total:
      raise errors.DataError(f"Split {split!r} of {dataset!r} is empty.")
    self.num_examples = min(total, max_examples) if max_examples else total
    self.split = split if self.num_examples == total else f"{split}[:{self.num_examples}]"
    self.image_key, self.image_size = image_key, image_size
    self.label_key = label_key
    self.captions_per_image = captions_per_image
    super().__init__()

  def _dataset(self, chunk: int) -> tf.data.Dataset:
    top = self.image_key.split("/")[0]
    ds = self.builder.as_dataset(split=self.split, shuffle_files=False,
                                 decoders={top: tfds.decode.SkipDecoding()}
                                 if "/" not in self.image_key else None)
    size, n = self.image_size, self.captions_per_image

    def prepare(ex):
      out = {}
      for name, key in self.fields.items():
        value = sources.nested(ex, key)
        if name == "captions" and value.dtype == tf.string and value.shape.rank == 1:
          value = _pad_captions(value, n)
        out[name] = value
      image = sources.nested(ex, self.image_key)
      if image.dtype == tf.string:
        image = pipeline.decode(image)
      out["image"] = pipeline.normalize(pipeline.center_crop(image, size))
      return out

    return ds.map(sources.traced(prepare), num_parallel_calls=tf.data.AUTOTUNE).batch(chunk).prefetch(2)

  def class_names(self) -> list[str]:
    feature = sources.feature(self.builder.info.features, self.label_key)
    names = getattr(feature, "names", None)
    if not names:
      raise errors.DataError(
          f"Feature {self.label_key!r} of {self.name} is not a ClassLabel with names; "
          "set label_key to a class label feature or give class_names.")
    return list(names)


def _read_text(path: str) -> str | None:
  try:
    with tf.io.gfile.GFile(path, "r") as f:
      return f.read()
  except tf.errors.NotFoundError:
    return None


def _natural_key(path: str):
  return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", os.path.basename(path))]


def _scan_tar(path: str) -> tuple[int, str | None]:
  """(samples with an image member, problem or None): the tar's headers, not its contents."""
  keys = set()
  try:
    with tf.io.gfile.GFile(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
      for member in tar:
        stem, _, ext = os.path.basename(member.name).partition(".")
        if member.isfile() and ext.lower() in WDS_IMAGE_EXTS:
          keys.add(os.path.join(os.path.dirname(member.name), stem))
  except (tarfile.TarError, OSError, EOFError, tf.errors.OpError) as e:
    return len(keys), f"{type(e).__name__}: {e}"
  return len(keys), None


class WdsSplit(Split):
  """A split of a CLIP_benchmark webdataset set (the layout in the module docstring).

  Unusable samples (no image member, an unreadable image, a .cls that is not a class index, no
  caption) are skipped and counted; the count is logged after a full pass and kept in `skipped`.
  """

  def __init__(self, root: str, split: str, image_size: int, *, labels: bool, captions: bool,
               max_examples: int | None = None, captions_per_image: int = 5):
    self.root = root.rstrip("/")
    self.name = f"wds:{self.root}/{split}"
    self.image_size, self.captions_per_image = image_size, captions_per_image
    self.labels, self.captions = labels, captions
    if not tf.io.gfile.isdir(self.root):
      raise errors.NotFoundError(f"Webdataset evaluation set {self.root} does not exist: download "
                                 "a CLIP_benchmark set there (see the README's evaluation data).")
    kind = (_read_text(os.path.join(self.root, "dataset_type.txt")) or "classification")
    kind = kind.strip().lower()
    wanted = "retrieval" if captions else "classification"
    if kind != wanted:
      use = "a retrieval evaluator" if kind == "retrieval" else "a zeroshot or linear_probe evaluator"
      raise errors.DataError(f"{self.root} is a {kind} set (its dataset_type.txt), not a {wanted} "
                             f"set: evaluate it with {use}.")
    self.shards = self._shards(split)
    scans = [_scan_tar(s) for s in self.shards]
    for shard, (count, problem) in zip(self.shards, scans):
      if problem:
        logging.warning("Evaluation shard %s is unreadable after %d samples (%s); the rest of it "
                        "is left out.", shard, count, problem)
    total = sum(count for count, _ in scans)
    if not total:
      raise errors.DataError(f"{self.name} has no samples with an image "
                             f"({'/'.join(WDS_IMAGE_EXTS)}) in {len(self.shards)} shard(s).")
    self.num_examples = min(total, max_examples) if max_examples else total
    self.skipped = self._produced = 0
    self._names = None
    if labels:
      text = _read_text(os.path.join(self.root, "classnames.txt"))
      self._names = [line.strip() for line in (text or "").splitlines() if line.strip()] or None
    super().__init__()

  def _shards(self, split: str) -> list[str]:
    folder = os.path.join(self.root, split)
    if not tf.io.gfile.isdir(folder):
      present = sorted(d.rstrip("/") for d in tf.io.gfile.listdir(self.root)
                       if tf.io.gfile.isdir(os.path.join(self.root, d)))
      raise errors.DataError(f"Webdataset evaluation set {self.root} has no split {split!r}; its "
                             f"splits are {present}.")
    nshards = _read_text(os.path.join(folder, "nshards.txt"))
    if nshards is not None:
      try:
        shards = [os.path.join(folder, f"{i}.tar") for i in range(int(nshards.strip()))]
      except ValueError:
        raise errors.DataError(f"{folder}/nshards.txt must hold the number of shards, "
                               f"got {nshards.strip()!r}.") from None
      missing = [s for s in shards if not tf.io.gfile.exists(s)]
      if missing:
        raise errors.NotFoundError(f"{folder}/nshards.txt says {len(shards)} shards but "
                                   f"{missing[0]} is missing (and {len(missing) - 1} more).")
      return shards
    shards = sorted(tf.io.gfile.glob(os.path.join(folder, "*.tar")), key=_natural_key)
    if not shards:
      raise errors.NotFoundError(f"{folder} holds no .tar shards.")
    return shards

  def _samples(self) -> Iterator[tuple]:
    """(image bytes, label or captions) of the usable samples, in order."""
    n = self.captions_per_image
    self.skipped = self._produced = 0
    for shard in self.shards:
      for record in sources.read_tar(shard, WDS_IMAGE_EXTS, "cls" if self.labels else "txt"):
        if self._produced >= self.num_examples:
          return
        if record["problem"] or not record["image"]:
          self.skipped += 1
          continue
        text = record["text"].decode("utf-8", errors="replace")
        if self.labels:
          try:
            value = int(text.strip())
          except ValueError:
            self.skipped += 1
            continue
        else:
          lines = [line.strip() for line in text.splitlines() if line.strip()][:n]
          if not lines:
            self.skipped += 1
            continue
          value = np.array(lines + [""] * (n - len(lines)), dtype=object)
        self._produced += 1
        yield record["image"], value

  def _dataset(self, chunk: int) -> tf.data.Dataset:
    n = self.captions_per_image
    value_spec = (tf.TensorSpec([], tf.int64) if self.labels else tf.TensorSpec([n], tf.string))
    ds = tf.data.Dataset.from_generator(
        self._samples, output_signature=(tf.TensorSpec([], tf.string), value_spec))
    name = "label" if self.labels else "captions"
    size = self.image_size

    def prepare(image, value):
      return {"image": pipeline.normalize(pipeline.center_crop(pipeline.decode(image), size)),
              name: value}

    ds = ds.map(sources.traced(prepare), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.ignore_errors().batch(chunk).prefetch(2)

  def _finished(self, count: int) -> None:
    self.skipped += self._produced - count  # images that did not decode
    if self.skipped:
      logging.warning("%s: %d unusable sample(s) skipped (no or unreadable image, bad .cls or no "
                      "caption); %d evaluated.", self.name, self.skipped, count)

  def class_names(self) -> list[str]:
    if self._names is None:
      raise errors.DataError(f"{self.root}/classnames.txt is missing or empty: it must list one "
                             "class name per line (or give the evaluator class_names).")
    return list(self._names)

  def templates(self) -> tuple[str, ...] | None:
    text = _read_text(os.path.join(self.root, "zeroshot_classification_templates.txt"))
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return tuple(line.replace("{c}", "{}") for line in lines) or None
