"""Input throughput: decoded, augmented and tokenized images per second (per core) from shards.

python tools/benchmark_input.py                       # generated 256-px JPEG webdataset shards
python tools/benchmark_input.py --data='wds:/data/laion/{00000..00009}.tar' --image_size=224

It times the training pipeline itself (flip.data.pipeline.train_dataset: read, check, decode, random
resized crop, flip, normalise, tokenize, batch) on this host's CPUs, with no accelerator work, once
with every core and once with tf.data restricted to one thread, and prints images/s in total and
per core. The generated data imitates img2dataset's LAION output: JPEG (quality 90) with the short
side resized to 256 and aspect ratios from 3:4 to 16:9, natural-image-like content, 10-25 words of
caption.
"""

from __future__ import annotations

import json
import tempfile
import time

from absl import flags

from flip import hostmem

hostmem.reexec_with_huge_pages()  # first: the restart (flip/hostmem.py) before JAX and TF load

import numpy as np
import tensorflow as tf

from flip import cli
from flip import config_lib
from flip import machine
from flip.data import pipeline
from flip.data import shard_writer
from flip.data import tokenizer as tokenizer_lib

_DATA = flags.DEFINE_string("data", None, "config.input.data to read; default: generated shards.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Training resolution.")
_BATCH = flags.DEFINE_integer("batch", 256, "Batch size.")
_BATCHES = flags.DEFINE_integer("batches", 12, "Timed batches per measurement.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed batches first (fills buffers).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 2000, "Generated images (when --data is unset).")
_SHORT_SIDE = flags.DEFINE_integer("short_side", 256, "Short side of the generated images.")
_THREADS = flags.DEFINE_list("threads", ["0", "1"],
                             "tf.data thread-pool sizes to time; 0 = all cores.")
_JSON = flags.DEFINE_string("json", None, "Also write the results here.")

WORDS = ("a photo of the dog cat man woman car street house tree on in with red blue green "
         "small large old new beautiful view sunset beach mountain city people table food "
         "vintage poster logo design white black background wooden modern").split()


def synthetic_image(rng: np.random.Generator, short_side: int) -> bytes:
  """A JPEG with smooth colour regions, edges and fine texture, like a downscaled photo."""
  aspect = rng.choice([0.75, 1.0, 1.33, 1.5, 1.78])
  h, w = (short_side, int(short_side * aspect)) if rng.random() < 0.7 else (
      int(short_side * aspect), short_side)
  low = rng.random((4, 4, 3)) * 255
  image = tf.image.resize(low[None], [h, w], method="bicubic")[0].numpy()
  for _ in range(rng.integers(2, 6)):  # a few flat shapes with hard edges
    y, x = rng.integers(0, h), rng.integers(0, w)
    image[y:y + rng.integers(10, h // 2), x:x + rng.integers(10, w // 2)] = rng.random(3) * 255
  image += rng.normal(0, 12, image.shape)  # texture / sensor noise
  image = np.clip(image, 0, 255).astype(np.uint8)
  return tf.io.encode_jpeg(image, quality=90).numpy()


def write_synthetic_shards(directory: str, num_images: int, short_side: int) -> str:
  rng = np.random.default_rng(0)
  with shard_writer.ShardWriter(directory, "wds", samples_per_shard=250) as writer:
    for i in range(num_images):
      caption = " ".join(rng.choice(WORDS, rng.integers(10, 26)))
      writer.write(f"{i:09d}", synthetic_image(rng, short_side), caption)
  return f"wds:{directory}"


def measure(config, threads: int, batches: int, warmup: int) -> float:
  """Images per second of the training pipeline with a tf.data pool of `threads` (0: default)."""
  tokenizer = tokenizer_lib.from_config(config.input)
  ds = pipeline.train_dataset(config, tokenizer)
  if threads:
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    ds = ds.with_options(options)
  it = iter(ds)
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
  batch["image"].numpy()
  return batches * config.input.global_batch_size / (time.perf_counter() - start)


def main(argv):
  del argv
  host = machine.describe()
  cores = host["cpu_count"]
  print(f"CPU: {host['cpu_model']}, {cores} cores")
  with tempfile.TemporaryDirectory() as tmp:
    data = _DATA.value
    if not data:
      t0 = time.time()
      data = write_synthetic_shards(tmp, _NUM_IMAGES.value, _SHORT_SIDE.value)
      print(f"generated {_NUM_IMAGES.value} JPEGs (short side {_SHORT_SIDE.value}) in "
            f"{time.time() - t0:.0f}s")
    config = config_lib.base_config()
    config.input.update(data=data, image_size=_IMAGE_SIZE.value,
                        global_batch_size=_BATCH.value, shuffle_buffer=1000)
    rows = []
    for threads in (int(t) for t in _THREADS.value):
      per_s = measure(config, threads, _BATCHES.value, _WARMUP.value)
      used = threads or cores
      rows.append({"threads": used, "images_per_s": per_s, "images_per_s_per_core": per_s / used})
      print(f"{used:>3} thread(s): {per_s:8.1f} images/s = {per_s / used:7.1f} per core "
            f"({_IMAGE_SIZE.value} px, batch {_BATCH.value})")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"data": _DATA.value or "synthetic", "cores": cores, **host,
                 "rows": rows}, f, indent=2)


if __name__ == "__main__":
  cli.run(main, join=False)
