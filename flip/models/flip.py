"""FLIP: the two towers, bias-free projections, L2 normalisation and a learnable temperature."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

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
    return l2_normalize(self.image_proj(self.image(images, mask_ratio)))

  def encode_text(self, tokens: jax.Array) -> jax.Array:
    return l2_normalize(self.text_proj(self.text(tokens)))

  def logit_scale(self) -> jax.Array:
    """The log-temperature, clipped to [0, log 100] as in CLIP and FLIP."""
    return jnp.clip(self.logit_scale_param, 0.0, LOGIT_SCALE_MAX)

  def __call__(self, images, tokens, mask_ratio: float = 0.0):
    return self.encode_image(images, mask_ratio), self.encode_text(tokens), self.logit_scale()


def from_config(model: ml_collections.ConfigDict) -> FLIP:
  return FLIP(
      image=vit.VisionTower(**model.image),
      text=text_lib.TextTower(**model.text),
      embed_dim=model.embed_dim)
