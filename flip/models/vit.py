"""ViT image tower: patch embedding, fixed 2-D sin-cos positions, random masking, GAP."""

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

  @nn.compact
  def __call__(self, images: jax.Array, mask_ratio: float = 0.0) -> jax.Array:
    """images [b, H, W, 3] -> pooled features [b, width]; drops patches when mask_ratio > 0."""
    p = self.patch_size
    _, height, width, _ = images.shape
    grid_h, grid_w = height // p, width // p
    # A conv with kernel = stride = patch is this reshape and one matmul.
    patches = einops.rearrange(images, "b (h p1) (w p2) c -> b (h w) (p1 p2 c)", p1=p, p2=p)
    posemb = jnp.asarray(sincos_2d(grid_h, grid_w, self.width))  # L width
    if mask_ratio > 0:
      # Dropping patches before the embedding is the same as after it (embedding and position
      # are per patch) and skips the dropped patches' embedding matmul.
      patches, keep_idx = random_masking(patches, self.make_rng("mask"), mask_ratio)
      posemb = posemb[keep_idx]  # b keep width
    x = nn.Dense(self.width, name="patch_embed", dtype=self.options.dtype,
                 kernel_init=transformer.partitioned(transformer.dense_init(), ("patch", "embed")),
                 bias_init=transformer.partitioned(nn.initializers.zeros, ("embed",)))(patches)
    x = x + posemb.astype(x.dtype)
    x = transformer.Encoder(self.depth, self.num_heads, self.options, name="encoder")(x)
    return x.astype(jnp.float32).mean(axis=1)
