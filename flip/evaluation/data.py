"""Evaluation splits from TFDS: the evaluation transform, streamed in chunks, small ones cached."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from flip import errors
from flip.data import pipeline
from flip.data import sources

CACHE_BYTES = 1 << 30  # splits whose images fit in this many bytes are kept in memory


class EvalSplit:
  """Centre-cropped, normalised images of a TFDS split with some of its features, in chunks.

  Every process reads the whole split in the same order (the encoder shards each batch).
  `captions_per_image`: a text feature with several values per example is cut or padded (with
  empty strings) to that many.
  """

  def __init__(self, dataset: str, split: str, data_dir: str | None, image_key: str,
               image_size: int, keys: tuple[str, ...] = (), max_examples: int | None = None,
               captions_per_image: int = 5):
    self.builder = sources.builder(dataset, data_dir)
    self.name = f"{dataset}/{split}"
    missing = [k for k in (image_key, *keys) if sources.feature(self.builder.info.features, k)
               is None]
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
    self.image_key, self.image_size, self.keys = image_key, image_size, keys
    self.captions_per_image = captions_per_image
    self._cache = None
    self._cacheable = self.num_examples * image_size * image_size * 3 * 4 <= CACHE_BYTES

  def _dataset(self, chunk: int) -> tf.data.Dataset:
    top = self.image_key.split("/")[0]
    ds = self.builder.as_dataset(split=self.split, shuffle_files=False,
                                 decoders={top: tfds.decode.SkipDecoding()}
                                 if "/" not in self.image_key else None)
    size, n = self.image_size, self.captions_per_image

    def prepare(ex):
      out = {}
      for key in self.keys:
        value = sources.nested(ex, key)
        if value.dtype == tf.string and value.shape.rank == 1:
          value = tf.pad(value[:n], [[0, n - tf.minimum(tf.shape(value)[0], n)]])
          value = tf.ensure_shape(value, [n])
        out[key] = value
      image = sources.nested(ex, self.image_key)
      if image.dtype == tf.string:
        image = pipeline.decode(image)
      out["image"] = pipeline.normalize(pipeline.center_crop(image, size))
      return out

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(chunk).prefetch(2)

  def chunks(self, chunk: int = 1024) -> Iterator[dict[str, np.ndarray]]:
    """The split in order, `chunk` examples at a time (the last one shorter)."""
    if self._cache is not None:
      for i in range(0, self.num_examples, chunk):
        yield {k: v[i:i + chunk] for k, v in self._cache.items()}
      return
    batches = []
    for batch in self._dataset(chunk).as_numpy_iterator():
      if self._cacheable:
        batches.append(batch)
      yield batch
    if self._cacheable and batches:
      self._cache = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

  def all(self) -> dict[str, np.ndarray]:
    parts = list(self.chunks())
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def class_names(self, label_key: str) -> list[str]:
    feature = sources.feature(self.builder.info.features, label_key)
    names = getattr(feature, "names", None)
    if not names:
      raise errors.DataError(
          f"Feature {label_key!r} of {self.name} is not a ClassLabel with names; "
          "set label_key to a class label feature or give class_names.")
    return list(names)
