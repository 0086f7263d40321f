"""The pre-LayerNorm encoder block and stack shared by the image and text towers."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

LN_EPS = 1e-6


def dense_init():
  return nn.initializers.xavier_uniform()


def partitioned(init, names):
  return nn.with_logical_partitioning(init, names)


def layer_norm(name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LN_EPS, name=name,
                      scale_init=partitioned(nn.initializers.ones, ("embed",)),
                      bias_init=partitioned(nn.initializers.zeros, ("embed",)))


class Attention(nn.Module):
  """Multi-head self-attention; `mask` is bool [b, 1, 1, t] (True = attend) or None."""
  num_heads: int

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    width = x.shape[-1]
    head_dim = width // self.num_heads

    def proj(name):
      return nn.DenseGeneral(
          (self.num_heads, head_dim), name=name,
          kernel_init=partitioned(dense_init(), ("embed", "heads", "kv")),
          bias_init=partitioned(nn.initializers.zeros, ("heads", "kv")))

    q, k, v = proj("query")(x), proj("key")(x), proj("value")(x)  # b t n h
    y = jax.nn.dot_product_attention(q, k, v, mask=mask)
    return nn.DenseGeneral(
        width, axis=(-2, -1), name="out",
        kernel_init=partitioned(dense_init(), ("heads", "kv", "embed")),
        bias_init=partitioned(nn.initializers.zeros, ("embed",)))(y)


class MlpBlock(nn.Module):
  mlp_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    x = nn.Dense(self.mlp_dim, name="fc1",
                 kernel_init=partitioned(dense_init(), ("embed", "mlp")),
                 bias_init=partitioned(nn.initializers.zeros, ("mlp",)))(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(width, name="fc2",
                    kernel_init=partitioned(dense_init(), ("mlp", "embed")),
                    bias_init=partitioned(nn.initializers.zeros, ("embed",)))(x)


class EncoderBlock(nn.Module):
  num_heads: int
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    x = x + Attention(self.num_heads, name="attn")(layer_norm("ln1")(x), mask)
    return x + MlpBlock(x.shape[-1] * self.mlp_ratio, name="mlp")(layer_norm("ln2")(x))


class Encoder(nn.Module):
  """`depth` pre-LN blocks and a final LayerNorm."""
  depth: int
  num_heads: int
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    for i in range(self.depth):
      x = EncoderBlock(self.num_heads, self.mlp_ratio, name=f"block{i:02d}")(x, mask)
    return layer_norm("ln_final")(x)
