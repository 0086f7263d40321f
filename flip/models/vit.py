"""ViT image tower: patch embedding, positions, random masking, pooling.

FLIP's (the defaults): fixed 2-D sin-cos positions, no class token, the mean of the tokens after
the final LayerNorm. Other families' towers are options: a class token (never masked), learned
positions with a class slot, a LayerNorm before the blocks, a bias-free patch embedding,
class-token pooling, and OpenAI's pixel statistics (open_clip / OpenAI CLIP, flip.formats).
"""

from __future__ import annotations

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flip.models import transformer


def sincos_2d(grid_h: int, grid_w: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
  """Fixed [grid_h * grid_w, width] embedding: sin/cos of the row and column (MAE's layout)."""
  if width % 4:
    raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {width}.")
  quarter = width // 4
  omega = 1.0 / temperature ** (np.arange(quarter, dtype=np.float64) / quarter)
  rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")

  def embed(pos):
    angles = pos.reshape(-1, 1) * omega[None]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  return np.concatenate([embed(cols), embed(rows)], axis=1).astype(np.float32)


# Pixel statistics (0..1 scale) a tower's weights expect. The input pipeline always gives
# ImageNet-normalised pixels; a tower trained with OpenAI's statistics re-normalises them first.
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PIXEL_STATS = {
    "imagenet": IMAGENET_STATS,
    "openai": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}
POSEMBS = ("sincos2d", "learned")
POOLS = ("mean", "cls")


def renormalize(images: jax.Array, stats: str) -> jax.Array:
  """ImageNet-normalised pixels re-normalised with PIXEL_STATS[stats] (the identity for
  "imagenet")."""
  if stats == "imagenet":
    return images
  m0, s0 = (np.asarray(v, np.float64) for v in IMAGENET_STATS)
  m1, s1 = (np.asarray(v, np.float64) for v in PIXEL_STATS[stats])
  # The 0..1 pixels are x * s0 + m0; (x * s0 + m0 - m1) / s1 as one multiply-add.
  scale, shift = s0 / s1, (m0 - m1) / s1
  return images * scale.astype(np.float32) + shift.astype(np.float32)


def keep_length(num_tokens: int, mask_ratio: float) -> int:
  return int(num_tokens * (1 - mask_ratio))


def random_masking(tokens: jax.Array, rng: jax.Array, mask_ratio: float
                   ) -> tuple[jax.Array, jax.Array]:
  """Keeps a random `int(L * (1 - mask_ratio))` tokens per sample (argsort of uniform noise).

  tokens: [b, L, d]. Returns the kept tokens [b, keep, d] and their indices [b, keep].
  """
  batch, length, _ = tokens.shape
  keep = keep_length(length, mask_ratio)
  noise = jax.random.uniform(rng, (batch, length))
  keep_idx = jnp.argsort(noise, axis=1)[:, :keep]
  return jnp.take_along_axis(tokens, keep_idx[..., None], axis=1), keep_idx


class VisionTower(nn.Module):
  patch_size: int
  width: int
  depth: int
  num_heads: int
  options: transformer.TowerOptions = transformer.TowerOptions()
  class_token: bool = False  # a learned token prepended to the patches (never masked)
  posemb: str = "sincos2d"  # "sincos2d" (fixed) | "learned" (with a class slot if any)
  ln_pre: bool = False  # a LayerNorm before the blocks
  patch_bias: bool = True  # the patch embedding has a bias
  pool: str = "mean"  # "mean" of all tokens | "cls": the class token
  pixel_stats: str = "imagenet"  # a key of PIXEL_STATS: what the weights expect

  @nn.compact
  def __call__(self, images: jax.Array, mask_ratio: float = 0.0) -> jax.Array:
    """images [b, H, W, 3] -> pooled features [b, width]; drops patches when mask_ratio > 0."""
    p, o = self.patch_size, self.options
    batch, height, width, _ = images.shape
    grid_h, grid_w = height // p, width // p
    images = renormalize(images, self.pixel_stats)
    # A conv with kernel = stride = patch is this reshape and one matmul.
    patches = einops.rearrange(images, "b (h p1) (w p2) c -> b (h w) (p1 p2 c)", p1=p, p2=p)
    cls_pos = None
    if self.posemb == "learned":
      extra = int(self.class_token)
      table = self.param(
          "pos_embed", transformer.partitioned(nn.initializers.normal(0.02), ("length", "embed")),
          (grid_h * grid_w + extra, self.width))
      posemb, cls_pos = table[extra:], (table[0] if extra else None)
    else:
      posemb = jnp.asarray(sincos_2d(grid_h, grid_w, self.width))  # L width
    if mask_ratio > 0:
      # Dropping patches before the embedding is the same as after it (embedding and position
      # are per patch) and skips the dropped patches' embedding matmul.
      patches, keep_idx = random_masking(patches, self.make_rng("mask"), mask_ratio)
      posemb = posemb[keep_idx]  # b keep width
    x = nn.Dense(self.width, name="patch_embed", dtype=o.dtype, use_bias=self.patch_bias,
                 kernel_init=transformer.partitioned(transformer.dense_init(), ("patch", "embed")),
                 bias_init=transformer.partitioned(nn.initializers.zeros, ("embed",)))(patches)
    x = x + posemb.astype(x.dtype)
    if self.class_token:
      cls = self.param("cls_token",
                       transformer.partitioned(nn.initializers.normal(0.02), ("embed",)),
                       (self.width,))
      if cls_pos is not None:
        cls = cls + cls_pos
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, self.width)), x], 1)
    if self.ln_pre:
      x = transformer.layer_norm("ln_pre", o.dtype, o.ln_eps)(x)
    x = transformer.Encoder(self.depth, self.num_heads, o, name="encoder")(x)
    x = x.astype(jnp.float32)
    return x[:, 0] if self.pool == "cls" else x.mean(axis=1)
