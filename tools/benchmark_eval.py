"""Zero-shot evaluation throughput, and what it implies for ImageNet-1k (50,000 images, 1,000
classes x 80 prompts).

  python tools/benchmark_eval.py --config=vitb16_mask50 [--images=256] [--prompts=2000]
      [--batch=256] [--json=FILE]

It writes a CLIP_benchmark webdataset set of `--images` ImageNet-like JPEGs (short side 375,
quality 90; the ImageNet validation images average about 500x375) with 1,000 class names, then
times the zero-shot evaluator's two parts with the recipe's model (random weights: the speed does
not depend on them) on all of this host's devices:
  - the class embeddings: `--prompts` prompts through the text tower (prompts/s);
  - the images: the evaluator's own path, read, decode, resize and centre crop, embed, score
    (images/s), after one untimed batch that compiles.
ImageNet-1k zero-shot then takes 80,000 / (prompts/s) + 50,000 / (images/s); the JSON and the
printout give both rates, the estimate and the CPU model or accelerator it was measured on.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from absl import flags
from ml_collections import config_flags

from flip import cli
from flip import machine

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe (file or name).",
                                          lock_config=False)
_IMAGES = flags.DEFINE_integer("images", 256, "Timed images.")
_PROMPTS = flags.DEFINE_integer("prompts", 2000, "Timed prompts.")
_BATCH = flags.DEFINE_integer("batch", 256, "Embedding batch size (all devices).")
_JSON = flags.DEFINE_string("json", None, "Also write the results here.")
flags.mark_flags_as_required(["config"])

IMAGENET_IMAGES, IMAGENET_PROMPTS = 50_000, 1000 * 80


def write_set(root: str, n: int, seed: int = 0) -> None:
  """n JPEGs in CLIP_benchmark's layout (root/test/0.tar ...), 1,000 classes."""
  import io  # pylint: disable=g-import-not-at-top
  import tarfile  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, "test"))
  with tarfile.open(os.path.join(root, "test", "0.tar"), "w") as tar:
    for i in range(n):
      low = rng.random((6, 8, 3)) * 255
      array = np.asarray(Image.fromarray(low.astype(np.uint8)).resize((500, 375), Image.BICUBIC),
                         np.float32) + rng.normal(0, 12, (375, 500, 3))
      out = io.BytesIO()
      Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
      for ext, data in (("jpg", out.getvalue()), ("cls", str(i % 1000).encode())):
        info = tarfile.TarInfo(f"s{i:07d}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  with open(os.path.join(root, "test", "nshards.txt"), "w") as f:
    f.write("1\n")
  with open(os.path.join(root, "classnames.txt"), "w") as f:
    f.write("\n".join(f"class number {i}" for i in range(1000)) + "\n")


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  from flip import config_lib  # pylint: disable=g-import-not-at-top
  from flip import sharding  # pylint: disable=g-import-not-at-top
  from flip.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from flip.evaluation import embed  # pylint: disable=g-import-not-at-top
  from flip.evaluation import prompts as prompts_lib  # pylint: disable=g-import-not-at-top
  from flip.evaluation import zeroshot  # pylint: disable=g-import-not-at-top
  from flip.models import flip as flip_lib  # pylint: disable=g-import-not-at-top

  config = config_lib.resolve(_CONFIG.value)
  mesh = sharding.make_mesh(config.mesh)
  model = flip_lib.from_config(config.model)
  params = jax.jit(lambda rng: nn.unbox(flip_lib.init_params(
      model, rng, config.input.image_size, config.input.text_len)))(jax.random.key(0))
  tokenizer = tokenizer_lib.from_config(config.input)
  embedder = embed.Embedder(model, tokenizer, mesh, _BATCH.value, config.logical_axis_rules)

  templates = prompts_lib.templates("clip80")
  texts = [t.format(f"class number {i}") for i in range(1000) for t in templates]
  embedder.texts(params, texts[:embedder.batch_size])  # compiles
  start = time.perf_counter()
  embedder.texts(params, texts[:_PROMPTS.value])
  prompt_rate = _PROMPTS.value / (time.perf_counter() - start)

  with tempfile.TemporaryDirectory() as tmp:
    write_set(tmp, _IMAGES.value)
    evaluator = zeroshot.ZeroShot(
        embedder, image_size=config.input.image_size, dataset=f"wds:{tmp}", split="test",
        label_key="label", image_key="image", data_dir=None, templates=("a photo of a {}.",),
        class_names=None, max_examples=None, mask_ratio=0.0)
    class_emb = np.zeros((1000, config.model.embed_dim), np.float32)
    first = next(evaluator.data.chunks(embedder.batch_size))  # compiles the image tower
    embedder.images(params, first["image"])
    start = time.perf_counter()
    for chunk in evaluator.data.chunks(embedder.batch_size):  # read, decode, crop, embed, score
      _ = embedder.images(params, chunk["image"]) @ class_emb.T
    image_rate = _IMAGES.value / (time.perf_counter() - start)

  seconds = IMAGENET_PROMPTS / prompt_rate + IMAGENET_IMAGES / image_rate
  device = jax.devices()[0]
  result = {
      "image_tower": {k: config.model.image[k] for k in ("depth", "width", "patch_size")},
      "image_size": config.input.image_size, "dtype": config.model.dtype,
      "device_kind": device.device_kind, "platform": device.platform,
      "devices": jax.device_count(), "cpu_model": machine.cpu_model(), "batch": embedder.batch_size,
      "images": _IMAGES.value, "prompts": _PROMPTS.value,
      "images_per_s": round(image_rate, 2), "prompts_per_s": round(prompt_rate, 2),
      "imagenet_zeroshot_estimate_s": round(seconds, 1),
  }
  print(f"{jax.device_count()} x {device.device_kind} ({result['cpu_model']}): "
        f"{image_rate:.1f} images/s (read, decode, crop, embed), {prompt_rate:.1f} prompts/s; "
        f"ImageNet-1k zero-shot (80 prompts x 1,000 classes, 50,000 images): about "
        f"{seconds / 60:.1f} min")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
