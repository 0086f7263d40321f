"""flip.flops (the model FLOPs of MFU) against published counts, the paper and XLA."""

import dataclasses

import jax
import pytest

from flip import config_lib
from flip import flops
from flip import sharding


def paper_shape(size: str) -> flops.ClipShape:
  name = {"B/16": "vitb16_mask50", "L/16": "vitl16_mask50", "H/14": "vith14_mask50"}[size]
  return flops.ClipShape.from_config(config_lib.load_recipe(name))


def test_vit_b16_forward_matches_the_published_count():
  """ViT-B/16 at 224 px with a class token is 17.58 GMACs (timm / fvcore) = 35.2 GFLOPs."""
  shape = dataclasses.replace(paper_shape("B/16"), class_token=True)
  parts = flops.forward(shape, 0.0, 1)
  image = parts["patch_embed"] + parts["image"] - 2 * 768 * 512  # without the projection
  assert image / 2 == pytest.approx(17.58e9, rel=0.005)


def test_paper_flops_ratios_and_text_share():
  """Table 1 (ViT-L/16): 0.52x at 50% and 0.28x at 75% masking; the text tower is ~4.4% of the
  image tower's compute. (The paper rounds to two digits and its count may include the
  elementwise work, which scales about linearly: 0.514 and 0.277 here.)"""
  shape = paper_shape("L/16")
  full = sum(flops.forward(shape, 0.0, 1).values())
  assert sum(flops.forward(shape, 0.5, 1).values()) / full == pytest.approx(0.52, abs=0.01)
  assert sum(flops.forward(shape, 0.75, 1).values()) / full == pytest.approx(0.28, abs=0.01)
  parts = flops.forward(shape, 0.0, 1)
  assert parts["text"] / (parts["image"] + parts["patch_embed"]) == pytest.approx(0.044, abs=0.002)
  # A train step is three forwards, less the patch embedding's (unneeded) input gradient.
  assert flops.step_flops(shape, 0.0, 8) == pytest.approx(
      3 * 8 * full - 8 * parts["patch_embed"], rel=1e-3)  # the loss grows as batch^2


def test_embedding_only_kept_patches_is_counted():
  shape = paper_shape("B/16")
  after = flops.forward(shape, 0.75, 4)["patch_embed"]
  before = flops.forward(dataclasses.replace(shape, embed_after_masking=False), 0.75, 4)
  assert after == pytest.approx(before["patch_embed"] * 49 / 196)


@pytest.mark.parametrize("mask_ratio", [0.0, 0.75])
def test_analytic_count_agrees_with_xla(mask_ratio):
  """XLA's cost analysis of the real (unscanned, no remat) train step counts the same matrix
  products plus the elementwise work: a few percent more, never less."""
  c = config_lib.base_config()
  c.model.image.update(patch_size=8, width=256, depth=2, num_heads=4, remat="none")
  c.model.text.update(width=128, depth=2, num_heads=2, remat="none")
  c.model.embed_dim = 128
  c.input.update(image_size=64, global_batch_size=16)
  c.mesh.update(data=1, fsdp=1, model=1)
  mesh = sharding.make_mesh(c.mesh, devices=jax.devices()[:1])
  analytic = flops.step_flops(flops.ClipShape.from_config(c), mask_ratio, 16)
  counted = flops.xla_step_flops(c, mask_ratio, mesh)
  assert 1.0 <= counted / analytic < 1.08, (counted, analytic)
  # Full rematerialisation recomputes each block's forward: XLA counts about a third more.
  c.model.image.remat = c.model.text.remat = "full"
  counted = flops.xla_step_flops(c, mask_ratio, mesh)
  assert 1.25 < counted / analytic < 1.45, (counted, analytic)
