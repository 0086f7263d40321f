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
    features = transformer.constrain(self.image(images, mask_ratio), ("batch", "act_embed"))
    return l2_normalize(self.image_proj(features))

  def encode_text(self, tokens: jax.Array) -> jax.Array:
    features = transformer.constrain(self.text(tokens), ("batch", "act_embed"))
    return l2_normalize(self.text_proj(features))

  def logit_scale(self) -> jax.Array:
    """The log-temperature, clipped to [0, log 100] as in CLIP and FLIP."""
    return jnp.clip(self.logit_scale_param, 0.0, LOGIT_SCALE_MAX)

  def __call__(self, images, tokens, mask_ratio: float = 0.0):
    return self.encode_image(images, mask_ratio), self.encode_text(tokens), self.logit_scale()


def from_config(model: ml_collections.ConfigDict) -> FLIP:
  """The model of config.model: tower shapes and remat per tower, dtype and scan for both."""
  # .get: configs saved before these fields existed describe unscanned float32 models.
  dtype = model.get("dtype", "float32")
  if dtype not in transformer.DTYPES:
    raise ValueError(f"config.model.dtype={dtype!r}; choose one of "
                     f"{sorted(transformer.DTYPES)}.")
  shared = dict(dtype=transformer.DTYPES[dtype], scan=model.get("scan_layers", False),
                attention=transformer.check_attention(model.get("attention", "auto")))
  for tower in ("image", "text"):
    remat = model[tower].get("remat", "none")
    if remat not in transformer.REMAT_POLICIES:
      raise ValueError(f"config.model.{tower}.remat={remat!r}; choose one of "
                       f"{sorted(transformer.REMAT_POLICIES)}.")
  return FLIP(
      image=vit.VisionTower(**model.image, **shared),
      text=text_lib.TextTower(**model.text, **shared),
      embed_dim=model.embed_dim)
