"""Recipes load and carry the paper's numbers; bad configs stop with a clear message."""

import glob
import os

import ml_collections
import pytest

from flip import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


load = config_lib.load_recipe


def test_all_recipes_present():
  names = {os.path.basename(p)[:-3] for p in RECIPES}
  assert {"demo", "vitb16_mask50", "vitl16_mask50", "vitl16_mask75", "vith14_mask50"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_local_arg_shrinks_every_recipe_to_a_valid_cpu_config(path):
  c = load(path, "local")
  if c.stage == "tune":  # tuning recipes need the run they start from
    c.init_from = "/tmp/a_pretraining_run"
  config_lib.validate(c)
  assert c.input.data == "tfds:flip_shapes" and c.input.image_size <= 32
  assert c.input.global_batch_size <= 64 and c.total_steps <= 50
  assert c.mask_ratio == load(path).mask_ratio  # the recipe's masking is kept


@pytest.mark.parametrize("name,size,mask,warmup", [
    ("vitb16_mask50", "B/16", 0.5, 51_200_000), ("vitl16_mask50", "L/16", 0.5, 51_200_000),
    ("vitl16_mask75", "L/16", 0.75, 51_200_000), ("vith14_mask50", "H/14", 0.5, 256_000_000)])
def test_paper_recipes(name, size, mask, warmup):
  c = load(os.path.join(ROOT, "configs", f"{name}.py"))
  shape = config_lib.model_size(size)
  assert c.mask_ratio == mask
  assert c.model.image.width == shape["image"]["width"]
  assert c.model.text.depth == shape["text"]["depth"]
  assert c.input.global_batch_size == 65536 and c.input.image_size == 224
  assert c.input.text_len == 32 and c.model.text.vocab_size == 30522
  assert c.optim.base_lr * 65536 / 256 == pytest.approx(1.024e-3)
  assert (c.optim.b1, c.optim.b2, c.optim.weight_decay) == (0.9, 0.95, 0.2)
  assert c.optim.warmup_samples == warmup and c.total_samples == 12_800_000_000
  with pytest.raises(ValueError, match="config.input.data"):
    config_lib.validate(c)  # the paper's data must be named by the user


def test_mask_arg():
  assert load(os.path.join(ROOT, "configs", "demo.py"), "mask=0.75").mask_ratio == 0.75
  with pytest.raises(ValueError, match="comma list"):
    load(os.path.join(ROOT, "configs", "demo.py"), "bogus")


def demo():
  return load(os.path.join(ROOT, "configs", "demo.py"))


@pytest.mark.parametrize("change,message", [
    (lambda c: setattr(c, "mask_ratio", 1.0), "mask_ratio"),
    (lambda c: setattr(c.input, "image_size", 30), "multiple of"),
    (lambda c: setattr(c.model.image, "num_heads", 3), "divisible by"),
    (lambda c: setattr(c.input, "text_len", 40), "max_len"),
    (lambda c: setattr(c.input, "prefetch_to_device", -1), "prefetch_to_device"),
    (lambda c: c.input.__delattr__("global_batch_size"), "missing field.*input.global_batch_size"),
])
def test_validate_says_what_to_change(change, message):
  c = demo()
  change(c)
  with pytest.raises(ValueError, match=message):
    config_lib.validate(c)


def test_config_is_locked_against_typos():
  c = demo()
  c.lock()
  with pytest.raises(AttributeError):
    c.input.batch_size = 3
  assert isinstance(c, ml_collections.ConfigDict)
