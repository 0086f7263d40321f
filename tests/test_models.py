"""Model shapes and parameter counts (paper Table 9), masking, padding, temperature."""

import math

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flip import config_lib
from flip.configs import common
from flip.models import flip as flip_lib
from flip.models import text as text_lib
from flip.models import transformer
from flip.models import vit
from conftest import jit_apply


def count(tree):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("size,vision,text,total", [
    ("B/16", 86, 53, 141), ("L/16", 303, 109, 414), ("H/14", 631, 334, 967)])
def test_parameter_counts_match_table9(size, vision, text, total):
  c = config_lib.base_config()
  common.set_model(c, size)
  model = flip_lib.from_config(c.model)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3)), jnp.zeros((1, 32), jnp.int32)))
  params = nn.unbox(shapes["params"])
  for got, want in [(count(params["image"]), vision), (count(params["text"]), text),
                    (count(params), total)]:
    assert abs(got / 1e6 - want) / want < 0.02, (size, got, want)


def test_sincos_matches_formula():
  emb = vit.sincos_2d(3, 5, 8)
  assert emb.shape == (15, 8)
  row, col = 2, 4  # token index row * grid_w + col
  omega = 1 / 10_000 ** (np.arange(2) / 2)
  want = np.concatenate([np.sin(col * omega), np.cos(col * omega),
                         np.sin(row * omega), np.cos(row * omega)])
  np.testing.assert_allclose(emb[row * 5 + col], want, rtol=1e-6)


@pytest.mark.parametrize("length,ratio,keep", [(196, 0.5, 98), (196, 0.75, 49), (64, 0.6, 25),
                                               (10, 0.0, 10)])
def test_random_masking_keeps_int_L_times_1_minus_r(length, ratio, keep):
  tokens = jnp.arange(4 * length * 3, dtype=jnp.float32).reshape(4, length, 3)
  kept, idx = vit.random_masking(tokens, jax.random.key(0), ratio)
  assert kept.shape == (4, keep, 3) and keep == int(length * (1 - ratio))
  for b in range(4):
    assert len(set(np.asarray(idx[b]).tolist())) == keep  # no duplicates
    np.testing.assert_array_equal(kept[b], tokens[b][np.asarray(idx[b])])  # original tokens


def test_random_masking_differs_per_sample_and_per_rng():
  tokens = jnp.zeros((8, 64, 2))
  _, idx = vit.random_masking(tokens, jax.random.key(0), 0.75)
  sets = {tuple(sorted(np.asarray(i).tolist())) for i in idx}
  assert len(sets) == 8
  _, idx2 = vit.random_masking(tokens, jax.random.key(1), 0.75)
  assert not np.array_equal(np.sort(idx, axis=1), np.sort(idx2, axis=1))


def tiny_model():
  c = config_lib.base_config()
  c.model.image.update(patch_size=4, depth=2, width=32, num_heads=2)
  c.model.text.update(depth=2, width=32, num_heads=2, vocab_size=100)
  c.model.embed_dim = 16
  return flip_lib.from_config(c.model)


def init(model, size=16):
  images = jax.random.normal(jax.random.key(1), (3, size, size, 3))
  tokens = jax.random.randint(jax.random.key(2), (3, 32), 1, 100)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), images, tokens)["params"])
  return params, images, tokens


def test_mask_zero_equals_no_masking():
  model = tiny_model()
  params, images, _ = init(model)
  plain = jit_apply(model, {"params": params}, images, method=flip_lib.FLIP.encode_image)
  zero = jit_apply(model, {"params": params}, images, 0.0, method=flip_lib.FLIP.encode_image,
                   rngs={"mask": jax.random.key(3)})
  np.testing.assert_array_equal(plain, zero)
  # Independently: a ratio-0 random_masking is a pure permutation, which the encoder + GAP ignore.
  encoder = transformer.Encoder(depth=2, num_heads=2)  # default TowerOptions
  x = jax.random.normal(jax.random.key(4), (3, 16, 32))
  shuffled, _ = vit.random_masking(x, jax.random.key(5), 0.0)
  ep = jax.jit(encoder.init)(jax.random.key(0), x)
  np.testing.assert_allclose(jit_apply(encoder, ep, x).mean(1),
                             jit_apply(encoder, ep, shuffled).mean(1), atol=1e-5)


def test_masked_forward_is_random_per_rng():
  model = tiny_model()
  params, images, _ = init(model)
  outs = [jit_apply(model, {"params": params}, images, 0.5, method=flip_lib.FLIP.encode_image,
                    rngs={"mask": jax.random.key(k)}) for k in (0, 0, 1)]
  np.testing.assert_array_equal(outs[0], outs[1])
  assert not np.allclose(outs[0], outs[2])


def test_text_ignores_padding():
  model = tiny_model()
  params, _, _ = init(model)
  tokens = np.zeros((2, 32), np.int32)
  tokens[0, :5] = [98, 7, 8, 9, 99]
  tokens[1, :3] = [98, 7, 99]
  full = jit_apply(model, {"params": params}, tokens, method=flip_lib.FLIP.encode_text)
  short = jit_apply(model, {"params": params}, tokens[:, :6], method=flip_lib.FLIP.encode_text)
  np.testing.assert_allclose(full, short, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(full, axis=-1), 1.0, rtol=1e-5)
  assert text_lib.PAD_ID == 0


def test_logit_scale_init_and_clip():
  model = tiny_model()
  params, images, tokens = init(model)
  assert np.isclose(params["logit_scale"], math.log(1 / 0.07))
  for value, want in [(10.0, math.log(100)), (-1.0, 0.0), (2.0, 2.0)]:
    p = dict(params, logit_scale=jnp.asarray(value))
    _, _, scale = jit_apply(model, {"params": p}, images, tokens)
    assert np.isclose(scale, want)


def test_projections_have_no_bias():
  params, _, _ = init(tiny_model())
  assert set(params["image_proj"]) == {"kernel"} and set(params["text_proj"]) == {"kernel"}


def test_masking_before_the_patch_embedding_equals_masking_after_it(monkeypatch):
  """The tower drops patches before embedding them; the same kept patches embedded first and
  then gathered (MAE's order) give the same features."""
  model = tiny_model()
  params, images, _ = init(model)
  kept = []
  original = vit.random_masking

  def recording(tokens, rng, ratio):
    out, idx = original(tokens, rng, ratio)
    kept.append(idx)
    return out, idx

  monkeypatch.setattr(vit, "random_masking", recording)

  def encode(params, images):  # one program, its kept patches an output
    out = model.apply({"params": params}, images, 0.75, method=flip_lib.FLIP.encode_image,
                      rngs={"mask": jax.random.key(7)})
    (idx,) = kept
    return out, idx

  got, idx = jax.jit(encode)(params, images)
  assert idx.shape == (3, 4)  # 16 patches of 4x4 in a 16x16 image, a quarter kept
  image = params["image"]
  patches = einops.rearrange(images, "b (h p1) (w p2) c -> b (h w) (p1 p2 c)", p1=4, p2=4)
  tokens = (patches @ image["patch_embed"]["kernel"] + image["patch_embed"]["bias"]
            + vit.sincos_2d(4, 4, 32)[None])
  tokens = np.take_along_axis(np.asarray(tokens), np.asarray(idx)[..., None], axis=1)
  encoder = transformer.Encoder(depth=2, num_heads=2,
                                options=transformer.TowerOptions(scan=True))
  features = jit_apply(encoder, {"params": image["encoder"]}, tokens).mean(axis=1)
  want = flip_lib.l2_normalize(features @ params["image_proj"]["kernel"])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


class _FakeDevice:
  def __init__(self, platform, capability=None):
    self.platform = platform
    if capability:
      self.compute_capability = capability


@pytest.mark.parametrize("device,dtype,masked,want", [
    (_FakeDevice("gpu", "9.0"), jnp.bfloat16, False, "cudnn"),  # H100, image tower
    (_FakeDevice("gpu", "8.0"), jnp.float16, False, "cudnn"),
    (_FakeDevice("gpu", "9.0"), jnp.bfloat16, True, "xla"),  # text tower: padding mask
    (_FakeDevice("gpu", "9.0"), jnp.float32, False, "xla"),  # cuDNN has no float32 kernel
    (_FakeDevice("gpu", "7.0"), jnp.bfloat16, False, "xla"),  # V100
    (_FakeDevice("tpu"), jnp.bfloat16, False, "xla"),
    (_FakeDevice("cpu"), jnp.bfloat16, False, "xla"),
])
def test_auto_attention_takes_cudnn_only_where_it_applies(monkeypatch, device, dtype, masked, want):
  monkeypatch.setattr(jax, "devices", lambda *a: [device])
  assert transformer.attention_implementation("auto", dtype, masked) == want
  assert transformer.attention_implementation("xla", dtype, masked) == "xla"


def test_attention_choice_is_checked_and_xla_equals_auto_on_cpu():
  c = config_lib.base_config()
  c.model.attention = "flash"
  c.input.data = "tfds:flip_shapes"
  with pytest.raises(ValueError, match="config.model.attention='flash'"):
    config_lib.resolve(c)
  model = tiny_model()
  params, images, tokens = init(model)
  c = config_lib.base_config()
  c.model.image.update(patch_size=4, depth=2, width=32, num_heads=2)
  c.model.text.update(depth=2, width=32, num_heads=2, vocab_size=100)
  c.model.embed_dim = 16
  c.model.attention = "xla"
  forced = jit_apply(flip_lib.from_config(c.model), {"params": params}, images, tokens)
  for a, b in zip(forced, jit_apply(model, {"params": params}, images, tokens)):
    np.testing.assert_array_equal(a, b)


def test_masking_never_drops_the_class_token():
  """open_clip-style tower (class token, learned positions with a class slot, ln_pre, class-token
  pooling): masking keeps 1 + int(L * (1 - r)) tokens, the class token first and whole."""
  options = transformer.TowerOptions(act="quick_gelu", ln_eps=1e-5)
  tower = vit.VisionTower(patch_size=8, width=32, depth=1, num_heads=2, options=options,
                          class_token=True, posemb="learned", ln_pre=True, patch_bias=False,
                          pool="cls", pixel_stats="openai")
  images = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
  params = nn.unbox(jax.jit(tower.init)(jax.random.key(1), images)["params"])
  assert params["pos_embed"].shape == (17, 32) and "bias" not in params["patch_embed"]
  for ratio in (0.0, 0.5, 0.9):
    out, state = jit_apply(tower, {"params": params}, images, ratio,
                           rngs={"mask": jax.random.key(2)}, capture_intermediates=True)
    assert out.shape == (3, 32) and np.isfinite(out).all()
    encoded = state["intermediates"]["encoder"]["__call__"][0]
    assert encoded.shape == (3, 1 + vit.keep_length(16, ratio), 32), ratio
    first = state["intermediates"]["ln_pre"]["__call__"][0][:, 0]
    cls = params["cls_token"] + params["pos_embed"][0]
    want = nn.LayerNorm(epsilon=1e-5).apply({"params": params["ln_pre"]}, cls)
    np.testing.assert_allclose(first, np.broadcast_to(want, first.shape), atol=1e-6)
