"""What the recipes share: the paper's model sizes, its memory layout and evaluations, and the
`:arg` of every recipe (`local`, `mask=`). The recipe files set the values a reader looks for
(mask ratio, batch, learning rate, schedule); the schema with every field's default is
flip/config_lib.py:base_config().
"""

from __future__ import annotations

from typing import Any

import ml_collections

from flip import config_lib
from flip import errors

# The paper's Table 9: patch size, image tower (layers, width, heads), text tower, embedding dim.
MODEL_SIZES = {
    "B/16": (16, (12, 768, 12), (12, 512, 8), 512),
    "L/16": (16, (24, 1024, 16), (12, 768, 12), 768),
    "H/14": (14, (32, 1280, 16), (24, 1024, 16), 1024),
}


def model_size(name: str) -> dict[str, Any]:
  """The tower shapes (depth / width / heads) and the embedding dim of a Table 9 model."""
  if name not in MODEL_SIZES:
    raise errors.ConfigError(f"Unknown model size {name!r}; choose one of {sorted(MODEL_SIZES)}.")
  patch, (idepth, iwidth, iheads), (tdepth, twidth, theads), embed = MODEL_SIZES[name]
  return dict(
      image=dict(patch_size=patch, depth=idepth, width=iwidth, num_heads=iheads),
      text=dict(depth=tdepth, width=twidth, num_heads=theads),
      embed_dim=embed,
  )


def set_model(c: ml_collections.ConfigDict, name: str) -> None:
  """config.model's tower shapes for a Table 9 model size."""
  shape = model_size(name)
  c.model.image.update(shape["image"])
  c.model.text.update(shape["text"])
  c.model.embed_dim = shape["embed_dim"]


def paper_memory(c: ml_collections.ConfigDict) -> None:
  """What a 64k batch needs (tools/plan_memory.py; README "Scaling out"): full
  rematerialisation in both towers (ViT-L/16 on a v4-256 slice: 14 GiB of 32 per chip with it,
  52 GiB with "dots") and parameters + AdamW moments FSDP-sharded over all devices."""
  c.model.image.remat = c.model.text.remat = "full"
  c.mesh.update(data=1, fsdp=-1, model=1)


def paper_evals(c: ml_collections.ConfigDict, every_steps: int) -> None:
  """The paper's evaluations: ImageNet zero-shot (CLIP's 80 prompts and curated class names) and
  COCO retrieval, if their TFDS data sets are prepared in config.input.data_dir (training goes
  on without an evaluator whose data set is missing, with a warning)."""
  c.evals.imagenet = dict(type="zeroshot", dataset="imagenet2012", split="validation",
                          class_names="imagenet", templates="clip80", every_steps=every_steps)
  c.evals.coco = dict(type="retrieval", dataset="coco_captions", split="test",
                      text_key="captions/text", every_steps=every_steps)


def parse_arg(arg: str | None) -> dict[str, str]:
  """'local,mask=0.75' -> {'local': '', 'mask': '0.75'}."""
  out = {}
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, _, value = item.partition("=")
    out[key.strip()] = value.strip()
  return out


def shrink_for_cpu(c: ml_collections.ConfigDict) -> None:
  """Keeps the recipe's masking, optimizer and structure; shrinks sizes to run on one CPU."""
  c.model.image.update(patch_size=4, depth=2, width=64, num_heads=2)
  c.model.text.update(depth=1, width=64, num_heads=2)
  c.model.embed_dim = 32
  c.input.update(data="tfds:flip_shapes", image_size=32, global_batch_size=32,
                 shuffle_buffer=2048)
  c.optim.base_lr = 4e-3  # peak lr 5e-4 at batch 32
  c.optim.warmup_steps = 5
  c.total_steps = 20
  c.log_every_steps = 5
  c.checkpoint_every_steps = 10
  # The recipe's evaluation data (ImageNet, COCO) is not here: evaluate on flip_shapes instead.
  kept = {name: ev for name, ev in c.evals.items() if ev.get("dataset") == "flip_shapes"}
  c.evals = ml_collections.ConfigDict(kept or {"zeroshot": dict(
      type="zeroshot", dataset="flip_shapes", split="validation",
      templates=("a photo of a {}.",))})
  # A smoke run's evaluations: 500 test images; a probe trained on 1,000.
  for ev in c.evals.values():
    ev.every_steps = 10
    if ev.get("type") == "linear_probe":
      ev.max_train_examples = min(ev.get("max_train_examples") or 1000, 1000)
      ev.max_test_examples = min(ev.get("max_test_examples") or 500, 500)
    else:
      ev.max_examples = min(ev.get("max_examples") or 500, 500)


def apply_arg(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """A recipe's `:arg`: a comma list of `local` (shrink_for_cpu) and `mask=<ratio>`; then its
  evaluators completed with their defaults (config_lib.complete_evals). Every recipe ends with it."""
  args = parse_arg(arg)
  unknown = set(args) - {"local", "mask"}
  if unknown:
    raise errors.ConfigError(
        f"Unknown config arg(s) {sorted(unknown)}: the arg is a comma list of 'local' and "
        "'mask=<ratio>', e.g. --config=configs/demo.py:local,mask=0.75")
  if "mask" in args:
    try:
      c.mask_ratio = float(args["mask"])
    except ValueError:
      raise errors.ConfigError(
          f"mask={args['mask']!r} in the config arg is not a number.") from None
  if "local" in args:
    shrink_for_cpu(c)
  config_lib.complete_evals(c)  # every evaluator option overridable: --config.evals.NAME.OPTION
  return c
