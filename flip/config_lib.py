"""The config schema shared by every recipe, its `arg` parsing and its checks.

Each file in configs/ starts from `base_config()`, sets the recipe's fields and calls
`apply_arg(config, arg)`, so `get_config("local")` shrinks any recipe to run on one CPU
and `get_config("mask=0.75")` changes one field. `validate(config)` runs before anything is
built, so a wrong or missing field stops the run at once with a message saying what to change.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
from typing import Any

import ml_collections
from ml_collections import config_dict

from flip.data import spec

# Parameters use the `embed`/`mlp`/`heads`/`vocab`/... names that flip.models attach with
# nn.with_logical_partitioning; activations the `batch`/`act_*` names of
# flip.models.transformer.ACTIVATION_AXES. Defaults: parameters and optimizer state split
# FSDP-style (ZeRO) over `fsdp` by their `embed` axis, attention heads and MLP units over `model`
# (tensor parallel), activations over the batch axes (data, fsdp) and, inside attention and
# MLP, over `model`. With the default mesh (fsdp=1, model=1) it is pure data parallelism.
DEFAULT_LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "model"),
    ("act_kv", None),
    ("act_mlp", "model"),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("vocab", "model"),
    ("proj", None),
    ("patch", None),
    ("length", None),
    ("layers", None),  # the stacked-blocks axis of scanned towers
)


def model_size(name: str) -> dict[str, Any]:
  """Tower shapes of the paper's Table 9 (layers / width / heads) and the embedding dim."""
  sizes = {
      "B/16": (16, (12, 768, 12), (12, 512, 8), 512),
      "L/16": (16, (24, 1024, 16), (12, 768, 12), 768),
      "H/14": (14, (32, 1280, 16), (24, 1024, 16), 1024),
  }
  if name not in sizes:
    raise ValueError(f"Unknown model size {name!r}; choose one of {sorted(sizes)}.")
  patch, (idepth, iwidth, iheads), (tdepth, twidth, theads), embed = sizes[name]
  return dict(
      image=dict(patch_size=patch, depth=idepth, width=iwidth, num_heads=iheads),
      text=dict(depth=tdepth, width=twidth, num_heads=theads),
      embed_dim=embed,
  )


def base_config() -> ml_collections.ConfigDict:
  """Every field a recipe may set, with the paper's defaults (REFERENCE.md)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mask_ratio = 0.5  # fraction of image patches dropped in pretraining (FLIP: 0.5 or 0.75)

  c.model = ml_collections.ConfigDict()
  c.model.image = ml_collections.ConfigDict(
      dict(patch_size=16, depth=12, width=768, num_heads=12, mlp_ratio=4, remat="none"))
  c.model.text = ml_collections.ConfigDict(
      dict(vocab_size=30522, depth=12, width=512, num_heads=8, mlp_ratio=4, max_len=32,
           remat="none"))
  c.model.embed_dim = 512
  # Memory and speed levers (flip/models/transformer.py); none changes the model's function.
  # remat (per tower, above): "none" | "dots" (keep matmul outputs) | "full" (keep block inputs).
  c.model.dtype = "float32"  # compute dtype: "float32" (the paper) or "bfloat16" (f32 params)
  c.model.scan_layers = True  # one nn.scan over each tower's blocks: fast compiles when deep
  # jax.nn.dot_product_attention's implementation: "auto" = cuDNN flash attention on NVIDIA GPUs
  # (bfloat16, image tower), XLA elsewhere; or "xla" / "cudnn".
  c.model.attention = "auto"

  c.input = ml_collections.ConfigDict()
  # Training data: one source or several mixed (';'-separated), each FORMAT:LOCATION[?options]
  # with FORMAT wds | tfrecord | tfds | csv; see flip/data/sources.py and the README.
  c.input.data = config_dict.placeholder(str)  # e.g. "tfds:flip_shapes", "wds:/d/{00000..00099}.tar"
  c.input.data_dir = config_dict.placeholder(str)  # TFDS data_dir; None = TFDS default
  c.input.split = "train"  # TFDS split of tfds sources
  c.input.image_key = config_dict.placeholder(str)  # None: jpg/png/webp (wds), jpg (tfrecord), image
  c.input.text_key = config_dict.placeholder(str)  # None: txt (wds, tfrecord), captions (tfds)
  c.input.image_size = 224
  c.input.text_len = 32
  c.input.vocab_path = config_dict.placeholder(str)  # None = the packaged BERT-base uncased vocab
  c.input.global_batch_size = 65536
  c.input.crop_area_min = 0.5
  c.input.shuffle_files = True  # shard-level shuffle: a new random file order every epoch
  c.input.cycle_length = 16  # files read at once (interleaved) per process and source
  # Sample-level shuffle buffer (encoded records) within each group of cycle_length files; it is
  # refilled at each group's start, so a larger buffer mixes more but pauses longer there.
  c.input.shuffle_buffer = 20_000
  c.input.prefetch_to_device = 2  # batches sent to the accelerators ahead of the step

  c.optim = ml_collections.ConfigDict()
  c.optim.base_lr = 4e-6  # per 256 samples: lr = base_lr * global_batch_size / 256
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.2
  # Lengths: `*_steps` wins when set, else `*_samples` is converted with the global batch.
  c.optim.warmup_samples = 51_200_000
  c.optim.warmup_steps = config_dict.placeholder(int)
  c.total_samples = 12_800_000_000
  c.total_steps = config_dict.placeholder(int)

  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.stop_at_step = 0  # >0: save and exit after this step (schedule unchanged); for time-limited jobs

  # "pretrain" (from scratch or init_from) or "tune" (unmasked tuning: init_from required).
  c.stage = "pretrain"
  # A training workdir whose parameters start this run (step 0, fresh optimizer state); a resumed
  # run ignores it and continues from its own checkpoint. init_step: its step (None: newest).
  c.init_from = config_dict.placeholder(str)
  c.init_step = config_dict.placeholder(int)

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))  # -1: all remaining devices
  c.logical_axis_rules = DEFAULT_LOGICAL_AXIS_RULES

  # Evaluators: name -> dict(type=..., every_steps=..., ...); see flip/evaluation.
  c.evals = ml_collections.ConfigDict()
  return c


def paper_config(size: str, mask_ratio: float) -> ml_collections.ConfigDict:
  """The paper's pretraining recipe (REFERENCE.md) for a Table 9 model size.

  64k batch, lr 4e-6 x batch/256 = 1.024e-3, AdamW (0.9, 0.95), wd 0.2, warmup 51.2M samples
  (256M for H/14), cosine to 0 over 12.8B samples (~32 epochs of LAION-400M), 224 px.
  The data is left for the user to set (config.input.data).
  """
  c = base_config()
  c.mask_ratio = mask_ratio
  shape = model_size(size)
  c.model.image.update(shape["image"])
  c.model.text.update(shape["text"])
  c.model.embed_dim = shape["embed_dim"]
  c.input.image_size = 224
  c.input.global_batch_size = 65536
  c.optim.base_lr = 4e-6
  c.optim.warmup_samples = 256_000_000 if size == "H/14" else 51_200_000
  c.total_samples = 12_800_000_000
  # Memory (tools/plan_memory.py; README "Scaling out"): at 64k the activations need full
  # rematerialisation in both towers (ViT-L/16 on a v4-256 slice: 14 GiB of 32 per chip with
  # it, 52 GiB with "dots"); parameters and AdamW moments FSDP-sharded over all devices.
  c.model.image.remat = c.model.text.remat = "full"
  c.mesh.update(data=1, fsdp=-1, model=1)
  # The paper's evaluations, if their TFDS data sets are prepared in config.input.data_dir
  # (training goes on without an evaluator whose data set is missing, with a warning).
  c.evals.imagenet = dict(type="zeroshot", dataset="imagenet2012", split="validation",
                          class_names="imagenet", templates="clip80", every_steps=5000)
  c.evals.coco = dict(type="retrieval", dataset="coco_captions", split="test",
                      text_key="captions/text", every_steps=5000)
  return c


def tuning_config(size: str) -> ml_collections.ConfigDict:
  """The paper's unmasked tuning after pretraining (REFERENCE.md): mask 0, 64k batch, base lr
  4e-8 (1.024e-5 at 64k), warmup 25.6M samples, cosine over 0.32 epoch of LAION-400M (~128M
  samples), optimizer state reset; parameters from config.init_from (a pretraining workdir)."""
  c = paper_config(size, mask_ratio=0.0)
  c.stage = "tune"
  c.optim.base_lr = 4e-8
  c.optim.warmup_samples = 25_600_000
  c.total_samples = 128_000_000
  c.checkpoint_every_steps = 500
  for ev in c.evals.values():
    ev.every_steps = 1000
  return c


def from_json(text: str) -> ml_collections.ConfigDict:
  """A config saved as JSON (a run's config.json), with lists turned back into tuples (the
  configs use tuples: axis rules, templates, ...)."""
  def tuples(value):
    if isinstance(value, dict):
      return {k: tuples(v) for k, v in value.items()}
    if isinstance(value, list):
      return tuple(tuples(v) for v in value)
    return value

  return ml_collections.ConfigDict(tuples(json.loads(text)))


def load_recipe(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a recipe file, e.g. to build one recipe on another."""
  module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  if module_spec is None or not os.path.exists(path):
    raise FileNotFoundError(f"No recipe file {path}.")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg)


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
  for ev in c.evals.values():
    ev.every_steps = 10


def apply_arg(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  args = parse_arg(arg)
  unknown = set(args) - {"local", "mask"}
  if unknown:
    raise ValueError(f"Unknown config arg(s) {sorted(unknown)}: the arg is a comma list of "
                     "'local' and 'mask=<ratio>', e.g. --config=configs/demo.py:local,mask=0.75")
  if "mask" in args:
    c.mask_ratio = float(args["mask"])
  if "local" in args:
    shrink_for_cpu(c)
  return c


def steps_from(section: ml_collections.ConfigDict, name: str, global_batch_size: int) -> int:
  """`{name}_steps` if set, else ceil(`{name}_samples` / global batch): the paper counts samples."""
  steps = section.get(f"{name}_steps")
  if steps is not None:
    return int(steps)
  samples = section.get(f"{name}_samples")
  if samples is None:
    raise ValueError(f"Set config {name}_steps or {name}_samples.")
  return int(math.ceil(samples / global_batch_size))


def _missing_fields(schema: ml_collections.ConfigDict, config: Any, prefix: str = "") -> list[str]:
  missing = []
  for key, value in schema.items():
    path = f"{prefix}{key}"
    if key not in config:
      missing.append(path)
    elif isinstance(value, ml_collections.ConfigDict) and key != "evals":
      missing += _missing_fields(value, config[key], path + ".")
  return missing


def validate(config: ml_collections.ConfigDict) -> None:
  """Stops at once, with what to change, on a config that cannot run."""
  missing = _missing_fields(base_config(), config)
  if missing:
    raise ValueError(f"Config is missing field(s) {missing}. Build recipes on "
                     "flip.config_lib.base_config(), which defines every field.")
  spec.parse(config.input.data)  # the format of config.input.data; files are checked later
  if config.stage not in ("pretrain", "tune"):
    raise ValueError(f"config.stage={config.stage!r}: use 'pretrain' or 'tune'.")
  if config.stage == "tune" and not config.init_from:
    raise ValueError("config.stage='tune' starts from a pretrained run: set "
                     "--config.init_from=<the pretraining workdir>.")
  if not 0.0 <= config.mask_ratio < 1.0:
    raise ValueError(f"config.mask_ratio={config.mask_ratio} must be in [0, 1).")
  image = config.model.image
  if config.input.image_size % image.patch_size:
    raise ValueError(f"config.input.image_size={config.input.image_size} is not a multiple of "
                     f"config.model.image.patch_size={image.patch_size}.")
  for tower in ("image", "text"):
    t = config.model[tower]
    if t.width % t.num_heads:
      raise ValueError(f"config.model.{tower}.width={t.width} is not divisible by "
                       f"num_heads={t.num_heads}.")
  if config.input.text_len > config.model.text.max_len:
    raise ValueError(f"config.input.text_len={config.input.text_len} exceeds "
                     f"config.model.text.max_len={config.model.text.max_len}.")
  if config.input.global_batch_size <= 0:
    raise ValueError("config.input.global_batch_size must be positive.")
  if config.input.get("prefetch_to_device", 0) < 0:
    raise ValueError(f"config.input.prefetch_to_device={config.input.prefetch_to_device} must "
                     "be >= 0 (the batches sent ahead; 0 sends each when it is needed).")
  for name, ev in config.evals.items():
    if "type" not in ev or "every_steps" not in ev:
      raise ValueError(f"config.evals.{name} needs 'type' and 'every_steps' fields.")
