"""Recipes load and carry the paper's numbers; the config gate rejects what cannot run."""

import json
import os
import re

import ml_collections
import pytest

from flip import config_lib
from flip import errors
from flip.configs import common
from flip.configs import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = config_lib.recipe_names()

load = config_lib.load_recipe


def test_all_recipes_present_and_packaged():
  assert {"demo", "vitb16_mask50", "vitl16_mask50", "vitl16_mask75",
          "vith14_mask50"} <= set(RECIPES)
  files = {f[:-3] for f in os.listdir(os.path.join(ROOT, "configs"))
           if f.endswith(".py") and f not in ("__init__.py", "common.py")}
  assert files == set(RECIPES)
  # By name and by path: the same recipe.
  assert load("vitl16_mask50").to_dict() == load(
      os.path.join(ROOT, "configs", "vitl16_mask50.py")).to_dict()


@pytest.mark.parametrize("name", RECIPES)
def test_local_arg_shrinks_every_recipe_to_a_valid_cpu_config(name):
  c = load(name, "local")
  if c.stage == "tune":  # tuning recipes need the run they start from
    c.init_from = "/tmp/a_pretraining_run"
  config_lib.validate(c)
  assert c.input.data == "tfds:flip_shapes" and c.input.image_size <= 32
  assert c.input.global_batch_size <= 64 and c.total_steps <= 50
  assert c.mask_ratio == load(name).mask_ratio  # the recipe's masking is kept
  for ev in config_lib.resolve(c).evals.values():  # smoke-sized evaluations
    assert ev.every_steps == 10
    if ev.type == "linear_probe":
      assert ev.max_train_examples <= 1000 and ev.max_test_examples <= 500
    else:
      assert ev.max_examples <= 500


@pytest.mark.parametrize("name,size,mask,warmup", [
    ("vitb16_mask50", "B/16", 0.5, 51_200_000), ("vitl16_mask50", "L/16", 0.5, 51_200_000),
    ("vitl16_mask75", "L/16", 0.75, 51_200_000), ("vith14_mask50", "H/14", 0.5, 256_000_000)])
def test_paper_recipes(name, size, mask, warmup):
  c = load(name)
  shape = common.model_size(size)
  assert c.mask_ratio == mask
  assert c.model.image.width == shape["image"]["width"]
  assert c.model.text.depth == shape["text"]["depth"]
  assert c.input.global_batch_size == 65536 and c.input.image_size == 224
  assert c.input.text_len == 32 and c.model.text.vocab_size == 30522
  assert c.optim.base_lr * 65536 / 256 == pytest.approx(1.024e-3)
  assert (c.optim.b1, c.optim.b2, c.optim.weight_decay) == (0.9, 0.95, 0.2)
  assert c.optim.warmup_samples == warmup and c.total_samples == 12_800_000_000
  assert c.input.data is None  # the paper's data is named by the user (train.py requires it)
  config_lib.validate(c)


def test_mask_arg():
  assert demo.get_config("mask=0.75").mask_ratio == 0.75
  with pytest.raises(errors.ConfigError, match="comma list"):
    demo.get_config("bogus")
  with pytest.raises(errors.ConfigError, match="not a number"):
    demo.get_config("mask=half")


def test_unknown_recipe_name_lists_the_recipes():
  with pytest.raises(errors.NotFoundError, match="vitl16_mask50"):
    load("vitl16_mask5")


@pytest.mark.parametrize("change,message", [
    (lambda c: setattr(c, "mask_ratio", 1.0), "mask_ratio"),
    (lambda c: setattr(c.input, "image_size", 30), "multiple of"),
    (lambda c: setattr(c.model.image, "num_heads", 3), "divisible by"),
    (lambda c: setattr(c.input, "text_len", 40), "max_len"),
    (lambda c: setattr(c.input, "prefetch_to_device", -1), "prefetch_to_device"),
    (lambda c: setattr(c, "stage", "finetune"), r"config.stage='finetune'.*'pretrain', 'tune'"),
    (lambda c: setattr(c.model, "dtype", "float16"), r"config.model.dtype.*'bfloat16'"),
    (lambda c: setattr(c.model, "attention", "flash"), r"config.model.attention.*'cudnn'"),
    (lambda c: setattr(c.model.text, "remat", "some"), r"config.model.text.remat.*'dots'"),
    (lambda c: setattr(c.model.image, "remat", "all"), r"config.model.image.remat.*'full'"),
    # Typos inside a recipe (the config is not locked while a recipe builds it).
    (lambda c: setattr(c.optim, "warmup_step", 5),
     r"Unknown config field config.optim.warmup_step. Did you mean 'warmup_steps'"),
    (lambda c: setattr(c, "total_step", 5), r"config.total_step. Did you mean 'total_steps'"),
    (lambda c: setattr(c.model.image, "widht", 5), r"config.model.image.widht"),
    # Evaluator options.
    (lambda c: setattr(c.evals.zeroshot, "max_exampels", 5),
     r"config.evals.zeroshot.max_exampels. Did you mean 'max_examples'"),
    (lambda c: setattr(c.evals.retrieval, "templates", "short"), r"evals.retrieval.templates"),
    (lambda c: setattr(c.evals.zeroshot, "type", "zero_shot"), r"type='zero_shot'.*linear_probe"),
    (lambda c: c.evals.zeroshot.__delattr__("dataset"), r"evals.zeroshot.*needs.*'dataset'"),
    (lambda c: setattr(c.evals.zeroshot, "every_steps", 0), r"every_steps=0"),
    (lambda c: setattr(c.evals.zeroshot, "mask_ratio", 1.0), r"evals.zeroshot.mask_ratio=1.0"),
    # The demo's 32 px images in 8 px patches: 16 patches; 0.95 keeps int(16 * 0.05) = 0.
    (lambda c: setattr(c, "mask_ratio", 0.95),
     r"config.mask_ratio=0.95 keeps no patch of the 16 of a 32px image \(patch size 8\).*at "
     r"most 0.9375"),
    (lambda c: setattr(c.evals.zeroshot, "mask_ratio", 0.95),
     r"config.evals.zeroshot.mask_ratio=0.95 keeps no patch"),
    (lambda c: setattr(c.evals, "zeroshot", dict(c.evals.zeroshot.to_dict(), templates="clip81")),
     r"template set 'clip81'"),
    (lambda c: setattr(c.evals.zeroshot, "templates", ("no slot",)), r"exactly one"),
    (lambda c: setattr(c.evals.zeroshot, "class_names", "imagenet21k"), r"imagenet21k"),
])
def test_resolve_says_what_to_change(change, message):
  c = demo.get_config()
  change(c)
  with pytest.raises(errors.ConfigError, match=message):
    config_lib.resolve(c)


def test_saved_values_of_the_wrong_type_or_shape_are_named():
  saved = json.loads(demo.get_config().to_json_best_effort())
  saved["input"]["image_size"] = "big"
  with pytest.raises(errors.ConfigError, match=r"config.input.image_size='big' has the wrong type"):
    config_lib.resolve(config_lib.from_json(json.dumps(saved)))
  saved = json.loads(demo.get_config().to_json_best_effort())
  saved["optim"] = 3
  with pytest.raises(errors.ConfigError, match=r"config.optim is a section"):
    config_lib.resolve(saved)


def test_the_largest_mask_ratio_keeping_one_patch_is_accepted():
  c = demo.get_config()
  c.mask_ratio = 0.9375  # keeps exactly 1 of 16 patches
  c.evals.zeroshot.mask_ratio = 0.9375
  assert config_lib.resolve(c).mask_ratio == 0.9375


def test_resolve_fills_defaults_and_locks():
  c = demo.get_config()
  del c.input["prefetch_to_device"]
  c.evals.retrieval = dict(type="retrieval", dataset="flip_shapes", every_steps=5)
  r = config_lib.resolve(c)
  assert r.input.prefetch_to_device == config_lib.base_config().input.prefetch_to_device
  assert r.evals.retrieval.ks == (1, 5, 10) and r.evals.retrieval.split == "test"
  assert r.evals.retrieval.mask_ratio == 0.0 and r.evals.retrieval.data_dir is None
  assert r.evals.zeroshot.templates == demo.get_config().evals.zeroshot.templates
  with pytest.raises(AttributeError):
    r.input.batch_size = 3  # locked
  assert config_lib.resolve(r).to_dict() == r.to_dict()  # idempotent


def test_older_saved_configs_get_the_values_of_their_runs():
  """A config.json from before fields existed: the values that describe that run."""
  saved = json.loads(config_lib.resolve(demo.get_config()).to_json_best_effort())
  del saved["model"]["scan_layers"]  # runs before scanned towers were unrolled
  del saved["model"]["attention"], saved["model"]["dtype"], saved["stage"]
  del saved["input"]["data"]
  saved["input"]["dataset"] = "flip_shapes"  # the old name of a TFDS source
  saved["input"]["cache"] = False  # removed
  old = config_lib.resolve(config_lib.from_json(json.dumps(saved)))
  assert old.model.scan_layers is False
  assert (old.model.attention, old.model.dtype, old.stage) == ("auto", "float32", "pretrain")
  assert old.input.data == "tfds:flip_shapes"
  assert "dataset" not in old.input and "cache" not in old.input


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # config_flags' loader
@pytest.mark.parametrize("name", RECIPES)
def test_every_evaluator_option_of_every_recipe_can_be_overridden(name):
  """--config.evals.NAME.OPTION=VALUE works for every option of every evaluator of a recipe,
  also those the recipe leaves to the defaults (None, or of several kinds)."""
  from absl import flags
  from ml_collections import config_flags
  evals = load(name, "local").evals
  assert evals
  values = dict(max_examples=("300", 300), max_test_examples=("7", 7), data_dir=("/d", "/d"),
                val_split=("validation", "validation"), templates=("clip80", "clip80"),
                class_names=("imagenet", "imagenet"))
  for ev_name, ev in evals.items():
    assert set(ev) == set(config_lib.EVALUATORS[ev.type]), ev_name  # completed with defaults
    for option, (text, want) in values.items():
      if option not in ev:
        continue
      argv = ["prog", f"--config={os.path.join(ROOT, 'configs', name + '.py')}:local",
              f"--config.evals.{ev_name}.{option}={text}"]
      fv = flags.FlagValues()  # as flip.main parses its flags (config_flags reads argv)
      config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)
      fv(argv)
      if fv.config.stage == "tune":  # tuning recipes need the run they start from
        fv.config.init_from = "/tmp/a_pretraining_run"
      resolved = config_lib.resolve(fv.config)
      assert resolved.evals[ev_name][option] == want, (ev_name, option)


def test_config_flag_is_locked_against_typos():
  c = demo.get_config()
  c.lock()
  with pytest.raises(AttributeError):
    c.input.batch_size = 3
  assert isinstance(c, ml_collections.ConfigDict)


def test_choices_match_the_implementations():
  """The gate's choice lists are what the model code implements (one list per choice)."""
  from flip.models import transformer
  assert set(config_lib.CHOICES["model.dtype"]) == set(transformer.DTYPES)
  assert set(config_lib.REMAT) == set(transformer.REMAT_POLICIES)
  assert set(config_lib.CHOICES["model.act"]) == set(transformer.ACTIVATIONS)
  from flip.models import text, vit
  assert set(config_lib.CHOICES["model.image.posemb"]) == set(vit.POSEMBS)
  assert set(config_lib.CHOICES["model.image.pool"]) == set(vit.POOLS)
  assert set(config_lib.CHOICES["model.image.pixel_stats"]) == set(vit.PIXEL_STATS)
  assert set(config_lib.CHOICES["model.text.pool"]) == set(text.POOLS)
  from flip.evaluation import suite
  assert set(config_lib.EVALUATORS) == set(suite.TYPES)
  import inspect
  for kind, cls in suite.TYPES.items():
    params = inspect.signature(cls).parameters
    keyword_only = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
    assert keyword_only == set(config_lib.EVALUATORS[kind]) - {"type", "every_steps"} | {
        "image_size"}, kind


@pytest.mark.parametrize("overrides,message", [
    ({"model.image.pool": "cls"}, "needs a class token"),
    ({"input.tokenizer": "bpe"}, "also CLIP's token '!'"),
    ({"model.act": "relu"}, "config.model.act='relu': choose one of"),
    ({"model.text.pool": "last"}, "config.model.text.pool='last': choose one of"),
    ({"model.image.mlp_ratio": 0.0}, "mlp_ratio=0.0 must be positive"),
])
def test_architecture_options_are_checked(overrides, message):
  c = config_lib.base_config()
  c.input.data = "tfds:flip_shapes"
  for path, value in overrides.items():
    section, _, key = path.rpartition(".")
    node = c
    for part in section.split("."):
      node = node[part]
    node[key] = value
  with pytest.raises(errors.ConfigError, match=re.escape(message)):
    config_lib.resolve(c)


def test_old_configs_resolve_to_flips_architecture():
  """A config.json from before the architecture options gets FLIP's (today's defaults)."""
  c = config_lib.base_config().to_dict()
  for key in ("act", "ln_eps"):
    del c["model"][key]
  for key in ("class_token", "posemb", "ln_pre", "patch_bias", "pool", "pixel_stats"):
    del c["model"]["image"][key]
  for key in ("causal", "pad_mask", "pool"):
    del c["model"]["text"][key]
  del c["input"]["tokenizer"]
  c["input"]["data"] = "tfds:flip_shapes"
  c["model"]["image"]["mlp_ratio"] = 4  # saved as an int then
  r = config_lib.resolve(c)
  assert (r.model.act, r.model.ln_eps, r.model.image.pool, r.model.text.pool) == (
      "gelu", 1e-6, "mean", "mean")
  assert r.model.image.mlp_ratio == 4.0 and r.input.tokenizer == "wordpiece"


def test_data_is_needed_to_train_not_to_evaluate(tmp_path):
  c = config_lib.base_config()
  assert c.input.data is None
  config_lib.resolve(c)  # evaluation and inference read no training data
  from flip import train
  with pytest.raises(errors.ConfigError, match="config.input.data is not set"):
    train.train_and_evaluate(c, str(tmp_path))
  assert not os.listdir(tmp_path)
