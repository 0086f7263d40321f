"""Unmasked tuning: loading a pretrained run into another model (resolution, text length,
block layout), clear failures, the tuning recipes, and masked-inference evaluation."""


import jax
import numpy as np
import pytest

from flip import checkpoint
from flip import config_lib
from flip import pretrained
from flip import sharding
from flip import train_step
from flip.data import tokenizer as tokenizer_lib
from flip.evaluation import embed
from flip.evaluation import suite
from flip.models import convert
from flip.configs import common
from flip.configs import demo
from flip.models import flip as flip_lib
from conftest import jit_apply



def tiny(image_size=16, patch=4, max_len=8, width=32, depth=2, scan=True):
  c = config_lib.base_config()
  c.model.image.update(patch_size=patch, depth=depth, width=width, num_heads=2)
  c.model.text.update(depth=1, width=32, num_heads=2, vocab_size=64, max_len=max_len)
  c.model.embed_dim = 16
  c.model.scan_layers = scan
  c.input.update(data="tfds:flip_shapes", image_size=image_size, text_len=min(8, max_len),
                 global_batch_size=8)
  c.optim.warmup_steps, c.total_steps = 1, 10
  c.mesh.update(data=-1)
  return c


def abstract_of(c, devices=1):
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:devices])
  _, init_fn, abstract, _ = train_step.build(c, mesh)
  return mesh, init_fn, abstract


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
  """A 'pretraining' workdir: random tiny params saved at step 7 with the run's config.json."""
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  c = tiny()
  c.mask_ratio = 0.5
  _, init_fn, _ = abstract_of(c)
  state = init_fn(jax.random.key(3))
  state = state.replace(step=state.step + 7)
  ckpt = checkpoint.Checkpointer(workdir, 1, 2)
  ckpt.save(7, state, force=True)
  ckpt.close()
  checkpoint.write_config(c, workdir)
  return workdir, jax.tree.map(np.asarray, state.params)


def load_into(c, workdir, devices=1):
  c.init_from = workdir
  mesh, init_fn, abstract = abstract_of(c, devices)
  params = pretrained.initial_params(c, mesh, abstract.params)
  return init_fn(jax.random.key(0), params), abstract


def test_loads_into_a_new_resolution_with_fresh_optimizer_state(pretrained_run):
  """16 px -> 32 px (4x4 -> 8x8 patch grid) on 8 devices: parameters carried over unchanged (the
  sin-cos image position embedding is recomputed for the new grid), step 0, zero moments."""
  workdir, source = pretrained_run
  c = tiny(image_size=32)
  c.mesh.update(data=2, fsdp=4)
  state, abstract = load_into(c, workdir, devices=8)
  assert int(state.step) == 0
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), source)
  assert all(float(np.abs(np.asarray(m)).max()) == 0
             for m in jax.tree.leaves(state.opt_state[0].mu))
  assert jax.tree.map(lambda x: x.sharding, state.params) == jax.tree.map(
      lambda x: x.sharding, abstract.params)
  model = flip_lib.from_config(c.model)
  images = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  tokens = np.arange(16).reshape(2, 8) % 63 + 1
  img, txt, _ = jit_apply(model, {"params": state.params}, images, tokens)
  assert img.shape == (2, 16) and np.isfinite(np.asarray(img)).all()
  src_model = flip_lib.from_config(tiny().model)  # the text tower is untouched
  np.testing.assert_allclose(txt, jit_apply(src_model, {"params": source}, tokens,
                                            method=flip_lib.FLIP.encode_text), atol=1e-6)


def test_unrolled_model_loads_scanned_checkpoint(pretrained_run):
  workdir, source = pretrained_run
  state, _ = load_into(tiny(scan=False), workdir)
  for i in range(2):
    got = state.params["image"]["encoder"][f"block{i:02d}"]["mlp"]["fc1"]["kernel"]
    np.testing.assert_array_equal(got, source["image"]["encoder"]["blocks"]["mlp"]["fc1"]
                                  ["kernel"][i])
  back = convert.adapt(state.params, jax.tree.map(np.asarray, source))  # and back again
  jax.tree.map(np.testing.assert_array_equal, back, source)


def test_text_position_embedding_is_resampled(pretrained_run):
  workdir, source = pretrained_run
  state, _ = load_into(tiny(max_len=15), workdir)
  old, new = source["text"]["pos_embed"], np.asarray(state.params["text"]["pos_embed"])
  assert old.shape == (8, 32) and new.shape == (15, 32)
  where = np.linspace(0, 7, 15)
  want = np.stack([np.interp(where, np.arange(8), old[:, j]) for j in range(32)], axis=1)
  np.testing.assert_allclose(new, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(new[[0, -1]], old[[0, -1]])


def test_learned_image_position_embedding_is_resampled_keeping_the_class_slot():
  """open_clip-style learned positions (a class slot + a g x g grid) onto another resolution:
  the class row is kept, the grid resampled bicubically (a smooth grid stays that function)."""
  rows, cols = np.meshgrid(np.linspace(0, 1, 4), np.linspace(0, 1, 4), indexing="ij")
  grid = np.stack([rows + 2 * cols, np.ones_like(rows)], -1).reshape(16, 2)  # linear: exact
  table = np.concatenate([[[7.0, -7.0]], grid]).astype(np.float32)
  out = np.asarray(convert.resample_grid(table, 1 + 36))
  assert out.shape == (37, 2)
  np.testing.assert_array_equal(out[0], [7.0, -7.0])
  big = out[1:].reshape(6, 6, 2)
  np.testing.assert_allclose(big[..., 1], 1.0, atol=1e-5)
  assert big[0, 0, 0] < big[0, -1, 0] < big[-1, -1, 0]  # the ramp keeps its direction
  np.testing.assert_array_equal(np.asarray(convert.resample_grid(table, 17)), table)
  source = {"image": {"pos_embed": table, "encoder": {}}, "text": {"encoder": {}}}
  target = {"image": {"pos_embed": jax.ShapeDtypeStruct((37, 2), np.float32), "encoder": {}},
            "text": {"encoder": {}}}
  assert convert.adapt(source, target)["image"]["pos_embed"].shape == (37, 2)
  with pytest.raises(ValueError, match="Cannot map"):
    convert.adapt(source, target, resample=False)
  with pytest.raises(ValueError, match="neither is a square grid"):
    convert.resample_grid(table[:15], 37)


@pytest.mark.parametrize("change, message", [
    (dict(patch=8), r"image/patch_embed/kernel of shape \(48, 32\) onto this model's \(192, 32\)"),
    (dict(width=64), r"Cannot map the checkpoint.s image/.* of shape \(2, 2, 16\) onto this model.s \(2, 2, 32\)"),
    (dict(depth=3), r"image/encoder/blocks/.* of shape \(2, .*onto this model.s \(3, "),
])
def test_unmappable_model_fails_clearly(pretrained_run, change, message):
  with pytest.raises(ValueError, match=message):
    load_into(tiny(**change), pretrained_run[0])


def test_missing_or_wrong_init_from_fails_clearly(pretrained_run, tmp_path):
  with pytest.raises(FileNotFoundError, match="not a FLIP training workdir"):
    load_into(tiny(), str(tmp_path / "nothing"))
  c = tiny()
  c.init_step = 5
  with pytest.raises(FileNotFoundError, match=r"No checkpoint at step 5 .*steps there: \[7\]"):
    load_into(c, pretrained_run[0])
  c = tiny()
  c.stage = "tune"
  with pytest.raises(ValueError, match="set --config.init_from"):
    config_lib.validate(c)


def test_tuning_recipes_carry_the_paper_settings():
  for name, size in (("vitb16", "B/16"), ("vitl16", "L/16"), ("vith14", "H/14")):
    c = config_lib.load_recipe(f"{name}_unmasked_tuning")
    assert c.stage == "tune" and c.mask_ratio == 0.0 and c.init_from is None
    assert c.optim.base_lr * c.input.global_batch_size / 256 == pytest.approx(1.024e-5)
    assert config_lib.steps_from(c.optim, "warmup", 65536) == 391  # 25.6M samples
    assert config_lib.steps_from(c, "total", 65536) == 1954  # 128M samples, 0.32 epoch
    assert c.model.image.width == common.model_size(size)["image"]["width"]
  demo_tune = config_lib.load_recipe("demo_unmasked_tuning")
  assert demo_tune.stage == "tune" and demo_tune.mask_ratio == 0.0
  assert demo_tune.model.to_dict() == demo.get_config().model.to_dict()


def test_masked_inference_is_an_evaluator_option(shapes_data_dir):
  c = tiny(image_size=32)
  c.model.text.vocab_size = 30522  # the packaged tokenizer's
  c.input.data_dir = shapes_data_dir
  mesh, init_fn, _ = abstract_of(c, devices=8)
  params = init_fn(jax.random.key(0)).params
  model = flip_lib.from_config(c.model)
  encoder = embed.Embedder(model, tokenizer_lib.Tokenizer(None, 8), mesh, 16)
  images = np.random.default_rng(1).standard_normal((20, 32, 32, 3)).astype(np.float32)
  full, masked = encoder.images(params, images), encoder.images(params, images, 0.5)
  np.testing.assert_array_equal(masked, encoder.images(params, images, 0.5))  # repeatable
  assert np.abs(full - masked).max() > 1e-3
  rng = jax.random.fold_in(jax.random.key(embed.MASK_SEED), 0)  # the first batch's masks
  want = jit_apply(model, {"params": params}, images[:16], 0.5,
                   method=flip_lib.FLIP.encode_image, rngs={"mask": rng})
  np.testing.assert_allclose(masked[:16], want, atol=2e-5)

  # Every evaluator passes its mask_ratio option to the image encoder.
  seen = []
  encode_images = encoder.images
  encoder.images = lambda p, x, ratio=0.0: seen.append(ratio) or encode_images(p, x, ratio)
  split = dict(dataset="flip_shapes", split="validation", max_examples=40, every_steps=1)
  for ev in (dict(type="zeroshot", templates=("a {}.",), **split),
             dict(type="retrieval", **split),
             dict(type="linear_probe", dataset="flip_shapes", train_split="train",
                  max_train_examples=40, test_split="validation", max_test_examples=40,
                  every_steps=1)):
    for ratio in (0.0, 0.75):
      seen.clear()
      suite.make_evaluator(dict(ev, mask_ratio=ratio), c, encoder)(params)
      assert seen and set(seen) == {ratio}, (ev["type"], seen)
  with pytest.raises(ValueError, match="mask_ratio=1.0 must be in"):
    suite.make_evaluator(dict(type="zeroshot", mask_ratio=1.0, **split), c, encoder)


# A tuning run from a pretraining run's checkpoint, end to end (32 px -> 48 px):
# tests/test_tools_tuning.py::test_two_stage_pretrains_then_tunes_and_tabulates.
