"""The config schema: every field with its default and choices, and the one gate, `resolve`.

`base_config()` defines every field a recipe may set. Recipes (the files in configs/, built with
the helpers of configs/common.py) start from it. `resolve(config)` is the one check every entry
point runs before anything is built: it rejects unknown fields anywhere (also inside an
evaluator's options), checks every choice and range, fills the defaults of fields a config does
not set (a run's config.json from before a field existed gets the value that describes that run)
and returns a complete, locked config, so that the code downstream reads fields directly.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
import math
import os
import pathlib
from typing import Any

import ml_collections
from ml_collections import config_dict

from flip import errors
from flip import sharding
from flip.data import spec
from flip.evaluation import prompts

# The choice fields: config path -> the allowed values.
REMAT = ("none", "dots", "full")
CHOICES = {
    "stage": ("pretrain", "tune"),
    "model.dtype": ("float32", "bfloat16"),
    "model.attention": ("auto", "xla", "cudnn"),
    "model.image.remat": REMAT,
    "model.text.remat": REMAT,
    # Architecture (flip/models): FLIP's first; the other families' (open_clip / OpenAI CLIP,
    # the released FLIP code) are set by their importers (flip/formats).
    "model.act": ("gelu", "gelu_tanh", "quick_gelu"),
    "model.image.posemb": ("sincos2d", "learned"),
    "model.image.pool": ("mean", "cls"),
    "model.image.pixel_stats": ("imagenet", "openai"),
    "model.text.pool": ("mean", "eot", "first"),
    "input.tokenizer": ("wordpiece", "bpe", "flip_official"),
}

# Fields added after runs had saved their config.json, with the value that describes those runs
# where it differs from today's default (older runs used unrolled towers).
LEGACY_DEFAULTS = {"model.scan_layers": False}
# Fields that were renamed or removed: old path -> (new path, value mapping) or None (dropped).
RENAMED = {
    "input.dataset": ("input.data", lambda name: f"tfds:{name}" if name else None),
    "input.cache": None,
}

REQUIRED = object()  # an evaluator option without a default
_EVAL_COMMON = dict(type=REQUIRED, every_steps=REQUIRED, dataset=REQUIRED, data_dir=None,
                    image_key="image", mask_ratio=0.0)
# Evaluator types and their options with defaults (flip/evaluation: zeroshot.py, retrieval.py,
# linear_probe.py document each). data_dir None: config.input.data_dir. mask_ratio 0: full
# images (> 0: masked inference, the paper's ablation).
EVALUATORS = {
    "zeroshot": dict(
        _EVAL_COMMON, split="test", label_key="label", max_examples=None,
        # None: the set's own (a webdataset set's zeroshot_classification_templates.txt), else
        # "short"; "short" (CLIP's 7), "clip80" (its 80) or a list with one "{}" each
        templates=None,
        class_names=None),  # None: the data set's; "imagenet": CLIP's curated names; or a list
    "retrieval": dict(
        _EVAL_COMMON, split="test", text_key="captions", max_examples=None,
        captions_per_image=5, ks=(1, 5, 10)),
    "linear_probe": dict(
        _EVAL_COMMON, train_split="train", test_split="test", label_key="label",
        max_train_examples=50_000, max_test_examples=None,
        # "ridge" (closed form, fast: the default during training) | "logistic" (CLIP's protocol:
        # L-BFGS logistic regression, C chosen on val_split or a held-out fifth of train)
        method="ridge", val_split=None,
        shots=(),  # k-shot variants, e.g. (1, 5, 10)
        full=True,  # also the probe on all the training features
        l2_regs=(1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0), seed=0),
}


# What a command-line override of an evaluator option (--config.evals.NAME.OPTION=VALUE) is
# parsed as, for the options whose default is None or that take values of several kinds (a
# name or a list); the others keep their default's type.
_OPTION_TYPES = dict(data_dir=str, max_examples=int, max_test_examples=int, val_split=str,
                     templates=object, class_names=object)


def base_config() -> ml_collections.ConfigDict:
  """Every field a recipe may set, with the paper's defaults (its Table 9 and training recipe)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mask_ratio = 0.5  # fraction of image patches dropped in pretraining (FLIP: 0.5 or 0.75)

  c.model = ml_collections.ConfigDict()
  c.model.image = ml_collections.ConfigDict(
      dict(patch_size=16, depth=12, width=768, num_heads=12, mlp_ratio=4.0, remat="none",
           # Architecture variants (flip/models/vit.py); these defaults are FLIP's.
           class_token=False, posemb="sincos2d", ln_pre=False, patch_bias=True, pool="mean",
           pixel_stats="imagenet"))
  c.model.text = ml_collections.ConfigDict(
      dict(vocab_size=30522, depth=12, width=512, num_heads=8, mlp_ratio=4.0, max_len=32,
           remat="none",
           # Architecture variants (flip/models/text.py); these defaults are FLIP's.
           causal=False, pad_mask=True, pool="mean"))
  c.model.embed_dim = 512
  c.model.act = "gelu"  # the MLPs' activation: "gelu" (exact) | "gelu_tanh" | "quick_gelu"
  c.model.ln_eps = 1e-6  # every LayerNorm's epsilon
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
  # "wordpiece" (FLIP: BERT's uncased WordPiece, [CLS] ... [SEP]) | "bpe" (CLIP's byte-level
  # BPE, context 77) | "flip_official" (the released FLIP code's WordPiece: no special tokens).
  c.input.tokenizer = "wordpiece"
  # None = the packaged vocabulary of the tokenizer (BERT-base uncased / CLIP's BPE merges)
  c.input.vocab_path = config_dict.placeholder(str)
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
  c.logical_axis_rules = sharding.DEFAULT_LOGICAL_AXIS_RULES

  # Evaluators: name -> dict(type=..., every_steps=..., options); the types and their options
  # (with defaults) are EVALUATORS below.
  c.evals = ml_collections.ConfigDict()
  return c


def from_json(text: str) -> ml_collections.ConfigDict:
  """A config saved as JSON (a run's config.json), with lists turned back into tuples (the
  configs use tuples: axis rules, templates, ...)."""
  return ml_collections.ConfigDict(_tuples(json.loads(text)))


def _tuples(value):
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load_recipe(name_or_path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a recipe: a name of the packaged recipes (`vitl16_mask50`, the files
  of configs/, installed as the package flip.configs) or the path of a recipe file."""
  if os.path.exists(name_or_path):
    module_spec = importlib.util.spec_from_file_location(pathlib.Path(name_or_path).stem,
                                                         name_or_path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  else:
    module = importlib.import_module(f"flip.configs.{recipe_name(name_or_path)}")
  return module.get_config(arg)


RECIPES = "flip.configs"  # the package of the training recipes (the repository's configs/)
TASK_LISTS = "flip.configs.benchmarks"  # flip.benchmark_suite's task lists (configs/benchmarks/)


def recipe_names(package: str = RECIPES) -> list[str]:
  """The names of the packaged recipes (configs/*.py but the helpers), or of another package's
  config files (TASK_LISTS: configs/benchmarks/*.py)."""
  folder = os.path.dirname(importlib.import_module(package).__file__)
  return sorted(f[:-3] for f in os.listdir(folder)
                if f.endswith(".py") and not f.startswith("_") and f != "common.py")


def recipe_name(name: str, package: str = RECIPES) -> str:
  """`name` if it is a packaged recipe, else an errors.NotFoundError listing them."""
  name = name[:-3] if name.endswith(".py") else name
  if name not in recipe_names(package):
    what = "recipe" if package == RECIPES else "task list"
    raise errors.NotFoundError(f"No {what} file or packaged {what} {name!r}; the packaged "
                               f"{what}s are {recipe_names(package)}.")
  return name


def recipe_path(name: str, package: str = RECIPES) -> str:
  """The file of a packaged recipe (for --config=NAME) or task list (package=TASK_LISTS)."""
  return importlib.util.find_spec(f"{package}.{recipe_name(name, package)}").origin


def steps_from(section: ml_collections.ConfigDict, name: str, global_batch_size: int) -> int:
  """`{name}_steps` if set, else ceil(`{name}_samples` / global batch): the paper counts samples."""
  steps = section[f"{name}_steps"]
  if steps is not None:
    return int(steps)
  samples = section[f"{name}_samples"]
  if samples is None:
    raise errors.ConfigError(f"Set config {name}_steps or {name}_samples.")
  return int(math.ceil(samples / global_batch_size))


# ---------------------------------------------------------------------------------------------
# The gate.

def _unknown(path: str, key: str, known) -> errors.ConfigError:
  close = difflib.get_close_matches(key, list(known), n=1)
  hint = f" Did you mean {close[0]!r}?" if close else ""
  return errors.ConfigError(
      f"Unknown config field config.{path}.{hint} The fields of this section are {sorted(known)} "
      "(every field is defined in flip/config_lib.py).")


def _lookup(raw: dict, path: str):
  *parents, leaf = path.split(".")
  for p in parents:
    raw = raw.get(p)
    if not isinstance(raw, dict):
      return None, leaf
  return raw, leaf


def _upgrade(raw: dict) -> None:
  """Renamed and removed fields of older configs, and the values older runs used."""
  for old, new in RENAMED.items():
    section, leaf = _lookup(raw, old)
    if section is None or leaf not in section:
      continue
    value = section.pop(leaf)
    if new is not None:
      target, new_leaf = _lookup(raw, new[0])
      if target is not None and target.get(new_leaf) is None:
        target[new_leaf] = new[1](value)
  for path, value in LEGACY_DEFAULTS.items():
    section, leaf = _lookup(raw, path)
    if section is not None and leaf not in section:
      section[leaf] = value


def _assign(schema: ml_collections.ConfigDict, raw: dict, prefix: str) -> None:
  """Sets raw's values into the schema (defaults stay where raw has none); unknown keys and
  values of the wrong type are errors naming the field."""
  for key, value in raw.items():
    path = f"{prefix}{key}"
    if key not in schema:
      raise _unknown(path, key, schema.keys())
    if key == "evals":  # resolved per evaluator type (resolve_evaluator)
      continue
    if isinstance(schema[key], ml_collections.ConfigDict):
      if not isinstance(value, dict):
        raise errors.ConfigError(f"config.{path} is a section with fields "
                                 f"{sorted(schema[key].keys())}, not a value ({value!r}).")
      _assign(schema[key], value, path + ".")
      continue
    try:
      setattr(schema, key, value)
    except (TypeError, ValueError) as e:
      raise errors.ConfigError(f"config.{path}={value!r} has the wrong type: {e}") from None


def resolve_evaluator(name: str, options: Any) -> dict:
  """An evaluator's options (config.evals.<name>) checked and completed with the defaults of
  EVALUATORS[options["type"]]."""
  path = f"config.evals.{name}"
  if not isinstance(options, dict):
    raise errors.ConfigError(f"{path} must be a dict(type=..., every_steps=..., ...), "
                             f"got {options!r}.")
  kind = options.get("type")
  if kind not in EVALUATORS:
    raise errors.ConfigError(f"{path}.type={kind!r}: choose one of {sorted(EVALUATORS)}.")
  schema = EVALUATORS[kind]
  for key in options:
    if key not in schema:
      raise _unknown(f"evals.{name}.{key}", key, schema)
  out = {**schema, **options}
  missing = [k for k, v in out.items() if v is REQUIRED]
  if missing:
    raise errors.ConfigError(f"{path} (a {kind} evaluator) needs the option(s) {missing}.")
  if not isinstance(out["every_steps"], int) or out["every_steps"] < 1:
    raise errors.ConfigError(f"{path}.every_steps={out['every_steps']!r} must be a positive "
                             "number of steps.")
  if not 0.0 <= out["mask_ratio"] < 1.0:
    raise errors.ConfigError(f"{path}.mask_ratio={out['mask_ratio']} must be in [0, 1).")
  if kind == "zeroshot":
    try:
      if out["templates"] is not None:
        prompts.templates(out["templates"])
      prompts.check_class_names(out["class_names"])
    except ValueError as e:
      raise errors.ConfigError(f"{path}: {e}") from None
  if kind == "linear_probe" and out["method"] not in ("ridge", "logistic"):
    raise errors.ConfigError(f"{path}.method={out['method']!r}: choose 'ridge' or 'logistic'.")
  for key in ("ks", "shots", "l2_regs"):
    if key in out:
      out[key] = tuple(out[key])
  return out


def _check_choices(config: ml_collections.ConfigDict) -> None:
  for path, allowed in CHOICES.items():
    value = config
    for part in path.split("."):
      value = value[part]
    if value not in allowed:
      raise errors.ConfigError(f"config.{path}={value!r}: choose one of {allowed}.")


def _check_kept_patches(config: ml_collections.ConfigDict, path: str, mask_ratio: float) -> None:
  """A mask ratio must keep at least one patch of the configured image (else NaN features)."""
  from flip.models import vit  # pylint: disable=g-import-not-at-top
  patches = (config.input.image_size // config.model.image.patch_size) ** 2
  if mask_ratio > 0 and vit.keep_length(patches, mask_ratio) < 1:
    raise errors.ConfigError(
        f"{path}={mask_ratio} keeps no patch of the {patches} of a "
        f"{config.input.image_size}px image (patch size {config.model.image.patch_size}): the "
        f"image tower would see nothing. Use a ratio of at most {1 - 1 / patches:.4g}.")


def _check_values(config: ml_collections.ConfigDict) -> None:
  if config.input.data is not None:  # needed to train (train.py), not to evaluate or infer
    spec.parse(config.input.data)  # its format; the files are checked when training starts
  if config.stage == "tune" and not config.init_from:
    raise errors.ConfigError("config.stage='tune' starts from a pretrained run: set "
                             "--config.init_from=<the pretraining workdir>.")
  if not 0.0 <= config.mask_ratio < 1.0:
    raise errors.ConfigError(f"config.mask_ratio={config.mask_ratio} must be in [0, 1).")
  image = config.model.image
  if config.input.image_size % image.patch_size:
    raise errors.ConfigError(
        f"config.input.image_size={config.input.image_size} is not a multiple of "
        f"config.model.image.patch_size={image.patch_size}.")
  _check_kept_patches(config, "config.mask_ratio", config.mask_ratio)
  for name, ev in config.evals.items():
    _check_kept_patches(config, f"config.evals.{name}.mask_ratio", ev.mask_ratio)
  text = config.model.text
  if config.input.tokenizer == "bpe" and (text.pad_mask or text.pool == "mean"):
    raise errors.ConfigError(
        "config.input.tokenizer='bpe' pads with id 0, which is also CLIP's token '!': set "
        "config.model.text.pad_mask=False and pool='eot' (CLIP's text tower, e.g. "
        "causal=True), as the open_clip models do.")
  if image.pool == "cls" and not image.class_token:
    raise errors.ConfigError("config.model.image.pool='cls' needs a class token: set "
                             "config.model.image.class_token=True or pool='mean'.")
  for tower in ("image", "text"):
    t = config.model[tower]
    if t.mlp_ratio <= 0 or int(t.width * t.mlp_ratio) < 1:
      raise errors.ConfigError(f"config.model.{tower}.mlp_ratio={t.mlp_ratio} must be positive.")
    if t.width % t.num_heads:
      raise errors.ConfigError(f"config.model.{tower}.width={t.width} is not divisible by "
                               f"num_heads={t.num_heads}.")
  if config.input.text_len > config.model.text.max_len:
    raise errors.ConfigError(f"config.input.text_len={config.input.text_len} exceeds "
                             f"config.model.text.max_len={config.model.text.max_len}.")
  if config.input.global_batch_size <= 0:
    raise errors.ConfigError("config.input.global_batch_size must be positive.")
  if config.input.prefetch_to_device < 0:
    raise errors.ConfigError(
        f"config.input.prefetch_to_device={config.input.prefetch_to_device} must be >= 0 (the "
        "batches sent ahead; 0 sends each when it is needed).")


def complete_evals(config: ml_collections.ConfigDict) -> None:
  """A recipe's evaluators (config.evals) checked and completed with their types' defaults, each
  option a typed field, so that every option can be overridden on the command line
  (`--config.evals.zeroshot.max_examples=300`), also those the recipe leaves to the defaults."""
  evals = {}
  for name, options in config.evals.items():
    if isinstance(options, ml_collections.ConfigDict):
      options = options.to_dict()
    evals[name] = ml_collections.ConfigDict({
        key: (config_dict.FieldReference(value, field_type=_OPTION_TYPES[key])
              if key in _OPTION_TYPES else value)
        for key, value in resolve_evaluator(name, options).items()})
  config.evals = ml_collections.ConfigDict(evals)


def resolve(config: ml_collections.ConfigDict | dict) -> ml_collections.ConfigDict:
  """The complete, checked, locked config: the one gate before anything is built.

  Unknown fields (anywhere, evaluator options included) and values of the wrong type, choice or
  range are errors (errors.ConfigError) that name the field and say what to change. Fields the
  config does not set get their defaults (LEGACY_DEFAULTS for runs saved before a field existed,
  RENAMED for old names), so downstream code reads every field directly.
  """
  raw = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  raw = json.loads(json.dumps(raw, default=list))  # a deep copy with plain containers
  raw = _tuples(raw)
  _upgrade(raw)
  out = base_config()
  _assign(out, raw, "")
  evals = raw.get("evals") or {}
  out.evals = ml_collections.ConfigDict(
      {name: resolve_evaluator(name, ev) for name, ev in evals.items()})
  _check_choices(out)
  _check_values(out)
  out.lock()
  return out


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises errors.ConfigError where `resolve` would: a config that cannot run."""
  resolve(config)
