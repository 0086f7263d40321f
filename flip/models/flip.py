"""FLIP: the two towers, bias-free projections, L2 normalisation and a learnable temperature."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from flip import sharding
from flip.models import text as text_lib
from flip.models import transformer
from flip.models import vit

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class FLIP(nn.Module):
  image: vit.VisionTower
  text: text_lib.TextTower
  embed_dim: int

  def setup(self):
    def proj(name):
      return nn.Dense(self.embed_dim, use_bias=False, name=name,
                      kernel_init=transformer.partitioned(transformer.dense_init(),
                                                          ("embed", "proj")))
    self.image_proj = proj("image_proj")
    self.text_proj = proj("text_proj")
    self.logit_scale_param = self.param(
        "logit_scale", transformer.partitioned(nn.initializers.constant(LOGIT_SCALE_INIT), ()), ())

  def encode_image(self, images: jax.Array, mask_ratio: float = 0.0) -> jax.Array:
    features = sharding.constrain(self.image(images, mask_ratio), ("batch", "act_embed"))
    return l2_normalize(self.image_proj(features))

  def encode_text(self, tokens: jax.Array) -> jax.Array:
    features = sharding.constrain(self.text(tokens), ("batch", "act_embed"))
    return l2_normalize(self.text_proj(features))

  def logit_scale(self) -> jax.Array:
    """The log-temperature, clipped to [0, log 100] as in CLIP and FLIP."""
    return jnp.clip(self.logit_scale_param, 0.0, LOGIT_SCALE_MAX)

  def __call__(self, images, tokens, mask_ratio: float = 0.0):
    return self.encode_image(images, mask_ratio), self.encode_text(tokens), self.logit_scale()


def tower_options(model: ml_collections.ConfigDict, tower: str) -> transformer.TowerOptions:
  """The TowerOptions of config.model's `tower` ("image" or "text")."""
  return transformer.TowerOptions(
      mlp_ratio=model[tower].mlp_ratio, dtype=transformer.DTYPES[model.dtype],
      remat=model[tower].remat, scan=model.scan_layers, attention=model.attention,
      act=model.act, ln_eps=model.ln_eps, causal=tower == "text" and model.text.causal)


def from_config(model: ml_collections.ConfigDict) -> FLIP:
  """The model of a resolved config's config.model (flip.config_lib.resolve)."""
  image, text = model.image, model.text
  return FLIP(
      image=vit.VisionTower(
          patch_size=image.patch_size, width=image.width, depth=image.depth,
          num_heads=image.num_heads, options=tower_options(model, "image"),
          class_token=image.class_token, posemb=image.posemb, ln_pre=image.ln_pre,
          patch_bias=image.patch_bias, pool=image.pool, pixel_stats=image.pixel_stats),
      text=text_lib.TextTower(
          vocab_size=text.vocab_size, width=text.width, depth=text.depth,
          num_heads=text.num_heads, max_len=text.max_len, options=tower_options(model, "text"),
          pad_mask=text.pad_mask, pool=text.pool),
      embed_dim=model.embed_dim)


def boxed_params(model: FLIP, image_size: int, text_len: int):
  """The model's parameters as abstract values (jax.eval_shape: nothing is computed), boxed in
  nn.LogicallyPartitioned with their logical axis names (what the sharding rules place)."""
  return jax.eval_shape(lambda rng: init_params(model, rng, image_size, text_len),
                        jax.random.key(0))


def init_params(model: FLIP, rng: jax.Array, image_size: int, text_len: int):
  """Random initial parameters (boxed, like boxed_params)."""
  return model.init({"params": rng}, jnp.zeros((1, image_size, image_size, 3), jnp.float32),
                    jnp.zeros((1, text_len), jnp.int32))["params"]


def abstract_params(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """The parameters of a resolved config's model as ShapeDtypeStructs carrying the shardings
  that config.logical_axis_rules give them on `mesh`: what a checkpoint is restored into."""
  boxed = boxed_params(from_config(config.model), config.input.image_size, config.input.text_len)
  return sharding.placed(boxed, mesh, config.logical_axis_rules)
