"""tf.data input: TFDS split -> decode -> augment -> tokenize -> batch (per process).

The training stream is a deterministic function of (seed, sample position): the order comes from
a seeded shuffle and every random choice (crop, flip, caption) from stateless ops seeded with the
sample's position in the stream. A run resumed at step k therefore sees exactly the batches an
uninterrupted run sees from step k on.
"""

from __future__ import annotations

from typing import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from flip.data import shapes  # noqa: F401  (registers the embedded `flip_shapes` builder)
from flip.data import tokenizer as tokenizer_lib

IMAGENET_MEAN = tf.constant([0.485, 0.456, 0.406]) * 255.0
IMAGENET_STD = tf.constant([0.229, 0.224, 0.225]) * 255.0
GENERATED_DATASETS = ("flip_shapes",)


def builder(dataset: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The TFDS builder, prepared if it is one we generate (no download needed)."""
  try:
    b = tfds.builder(dataset, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"Unknown TFDS data set {dataset!r}: set config.input.dataset to a TFDS name "
                     "(flip_shapes is the embedded one).") from e
  if not b.is_prepared():
    if dataset.split("/")[0].split(":")[0] not in GENERATED_DATASETS:
      raise FileNotFoundError(
          f"TFDS data set {dataset!r} is not prepared in data_dir={b.data_dir}; download and "
          "prepare it first (tfds build) or point config.input.data_dir at it.")
    b.download_and_prepare()
  return b


def load_split(dataset: str, split: str, data_dir: str | None, image_key: str,
               per_process: bool = True) -> tf.data.Dataset:
  """Examples with the image left encoded; each process reads its own even slice of the split."""
  b = builder(dataset, data_dir)
  if image_key not in b.info.features:
    raise ValueError(f"Data set {dataset!r} has no feature {image_key!r}; its features are "
                     f"{sorted(b.info.features)}.")
  if per_process and jax.process_count() > 1:
    split = tfds.even_splits(split, n=jax.process_count())[jax.process_index()]
  return b.as_dataset(split=split, shuffle_files=False,
                      decoders={image_key: tfds.decode.SkipDecoding()})


def decode(image_bytes: tf.Tensor) -> tf.Tensor:
  return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)


def normalize(image: tf.Tensor) -> tf.Tensor:
  return (tf.cast(image, tf.float32) - IMAGENET_MEAN) / IMAGENET_STD


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, size: int, area_min: float) -> tf.Tensor:
  """Crop of area (area_min, 1) and aspect (3/4, 4/3), bicubic-resized to size x size."""
  begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(area_min, 1.0),
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  image = tf.slice(image, begin, crop)
  return tf.clip_by_value(tf.image.resize(image, [size, size], method="bicubic"), 0.0, 255.0)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """Evaluation transform: resize the short side to `size` (bicubic), then a central crop."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = size / tf.reduce_min(shape)
  new_shape = tf.cast(tf.math.ceil(shape * scale), tf.int32)
  image = tf.image.resize(image, new_shape, method="bicubic")
  top = (new_shape[0] - size) // 2
  left = (new_shape[1] - size) // 2
  return tf.clip_by_value(image[top:top + size, left:left + size], 0.0, 255.0)


def pick_text(text: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """One caption: the string itself, or a random one of a sequence of captions."""
  if text.shape.rank == 0:
    return text
  index = tf.random.stateless_uniform([], seed, 0, tf.shape(text)[0], dtype=tf.int32)
  return text[index]


def train_dataset(config: ml_collections.ConfigDict, tokenizer: tokenizer_lib.Tokenizer,
                  start_step: int = 0) -> tf.data.Dataset:
  """This process's training batches from `start_step` on: {image f32 [b,H,W,3], text i32 [b,L]}."""
  inp = config.input
  local_batch = inp.global_batch_size // jax.process_count()
  ds = load_split(inp.dataset, inp.split, inp.data_dir, inp.image_key)
  ds = ds.map(lambda ex: (ex[inp.image_key], ex[inp.text_key]))
  if inp.cache:
    ds = ds.cache()
  ds = ds.shuffle(inp.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True).repeat()
  # Sample position in this process's stream: the seed of every random choice made for it.
  ds = ds.enumerate().skip(start_step * local_batch)

  def preprocess(position, example):
    image_bytes, text = example
    crop_seed, flip_seed, text_seed = tf.unstack(tf.random.experimental.stateless_split(
        tf.stack([tf.cast(config.seed, tf.int64), position]), 3))
    image = random_resized_crop(decode(image_bytes), crop_seed, inp.image_size, inp.crop_area_min)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return normalize(image), pick_text(text, text_seed)

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.map(lambda image, text: {"image": image, "text": tokenizer.tokenize(text)},
              num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE)


def numpy_iterator(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  return ds.as_numpy_iterator()


def eval_examples(dataset: str, split: str, data_dir: str | None, image_key: str,
                  image_size: int, keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
  """A whole (small) evaluation split in memory: centre-cropped, normalised images and `keys`."""
  ds = load_split(dataset, split, data_dir, image_key, per_process=False)
  ds = ds.map(lambda ex: dict({k: ex[k] for k in keys},
                              image=normalize(center_crop(decode(ex[image_key]), image_size))),
              num_parallel_calls=tf.data.AUTOTUNE)
  batches = list(ds.batch(1024).as_numpy_iterator())
  if not batches:
    raise ValueError(f"Split {split!r} of {dataset!r} is empty.")
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
