"""Non-autoregressive text tower: token and learned position embeddings, padding-aware."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flip.models import transformer

PAD_ID = 0


class TextTower(nn.Module):
  vocab_size: int
  width: int
  depth: int
  num_heads: int
  max_len: int = 32
  mlp_ratio: int = 4
  remat: str = "none"  # transformer.REMAT_POLICIES
  dtype: Any = jnp.float32  # compute dtype; parameters are float32
  scan: bool = False  # nn.scan over the blocks (stacked parameters)
  attention: str = "auto"  # transformer.attention_implementation

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    """tokens int [b, t] (PAD_ID = padding) -> mean of the non-padding tokens [b, width]."""
    length = tokens.shape[1]
    if length > self.max_len:
      raise ValueError(f"Text of length {length} exceeds the model's max_len {self.max_len}.")
    x = nn.Embed(self.vocab_size, self.width, name="token_embed", dtype=self.dtype,
                 embedding_init=transformer.partitioned(nn.initializers.normal(0.02),
                                                        ("vocab", "embed")))(tokens)
    posemb = self.param("pos_embed",
                        transformer.partitioned(nn.initializers.normal(0.01), ("length", "embed")),
                        (self.max_len, self.width))
    x = x + posemb[None, :length]
    valid = tokens != PAD_ID  # b t
    x = transformer.Encoder(self.depth, self.num_heads, self.mlp_ratio, self.dtype, self.remat,
                            self.scan, self.attention, name="encoder")(
                                x, valid[:, None, None, :])
    x = x.astype(jnp.float32)
    weights = valid.astype(x.dtype)[..., None]
    return (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)
