"""Text tower: token and learned position embeddings, a transformer, pooling.

FLIP's (the defaults): non-autoregressive, padding masked out of attention, the mean of the
non-padding tokens. CLIP's (open_clip, OpenAI): causal attention (TowerOptions.causal), no
padding mask, the end-of-text token's features (the highest id, as CLIP's argmax pooling).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from flip.models import transformer

PAD_ID = 0  # the token id of padding: masked out of attention and pooling (the tokenizer pads)
POOLS = ("mean", "eot", "first")


class TextTower(nn.Module):
  vocab_size: int
  width: int
  depth: int
  num_heads: int
  max_len: int = 32
  options: transformer.TowerOptions = transformer.TowerOptions()
  pad_mask: bool = True  # padding (PAD_ID) is masked out of attention
  pool: str = "mean"  # "mean" of the non-padding tokens | "eot": at the highest id | "first"

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    """tokens int [b, t] (PAD_ID = padding) -> pooled features [b, width]."""
    length = tokens.shape[1]
    if length > self.max_len:
      raise ValueError(f"Text of length {length} exceeds the model's max_len {self.max_len}.")
    x = nn.Embed(self.vocab_size, self.width, name="token_embed", dtype=self.options.dtype,
                 embedding_init=transformer.partitioned(nn.initializers.normal(0.02),
                                                        ("vocab", "embed")))(tokens)
    posemb = self.param("pos_embed",
                        transformer.partitioned(nn.initializers.normal(0.01), ("length", "embed")),
                        (self.max_len, self.width))
    x = x + posemb[None, :length]
    valid = tokens != PAD_ID  # b t
    x = transformer.Encoder(self.depth, self.num_heads, self.options, name="encoder")(
        x, valid[:, None, None, :] if self.pad_mask else None)
    x = x.astype(jnp.float32)
    if self.pool == "eot":
      return jnp.take_along_axis(x, jnp.argmax(tokens, axis=1)[:, None, None], axis=1)[:, 0]
    if self.pool == "first":
      return x[:, 0]
    weights = valid.astype(x.dtype)[..., None]
    return (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)
