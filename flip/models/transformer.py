"""The pre-LayerNorm encoder block and stack shared by the image and text towers.

How a tower's blocks compute is one typed value, `TowerOptions` (built from config.model by
flip.models.flip.from_config; the config gate checks every choice). Its levers are numerically
the same model:
- `dtype`: the compute dtype (bfloat16 for mixed precision); parameters stay float32 and
  LayerNorm statistics, softmax and the loss are computed in float32.
- `remat`: rematerialisation of each block in the backward pass, one of REMAT_POLICIES.
- `scan`: the blocks as one `nn.scan` over stacked parameters (leading `layers` axis): one
  block is compiled instead of `depth`, which keeps compile times flat for deep towers.
- `attention`: jax.nn.dot_product_attention's implementation (attention_implementation).
The other fields are the block architecture of other model families (their defaults keep
FLIP's): the MLP activation (`act`: exact GELU; GELU's tanh approximation; CLIP's QuickGELU),
the LayerNorm epsilon (1e-6; open_clip's 1e-5) and causal attention (CLIP's text tower).
Tower-level variants (a class token, learned image positions, poolings) are fields of the
towers, flip.models.vit.VisionTower and flip.models.text.TextTower.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flip import sharding

LN_EPS = 1e-6

# What a block keeps for the backward pass: everything ("none": no recomputation), only the
# matmul outputs ("dots": recompute the cheap elementwise ops), or only its input ("full").
REMAT_POLICIES = {
    "none": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The MLP's activation: exact GELU (FLIP, open_clip's default), its tanh approximation (the
# released FLIP code: flax's default) and QuickGELU, x * sigmoid(1.702 x) (OpenAI CLIP).
ACTIVATIONS = {
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * nn.sigmoid(1.702 * x),
}


@dataclasses.dataclass(frozen=True)
class TowerOptions:
  """How a tower's transformer blocks compute (the same for every block of the tower)."""
  mlp_ratio: float = 4  # MLP hidden units per unit of width (int(width * mlp_ratio))
  dtype: Any = jnp.float32  # compute dtype; parameters are float32
  remat: str = "none"  # a key of REMAT_POLICIES
  scan: bool = False  # nn.scan over the blocks (stacked parameters)
  attention: str = "auto"  # "auto" | "xla" | "cudnn": see attention_implementation
  act: str = "gelu"  # a key of ACTIVATIONS
  ln_eps: float = LN_EPS  # every LayerNorm's epsilon
  causal: bool = False  # each token attends only to itself and the tokens before it


constrain = sharding.constrain


def constrain_tokens(x: jax.Array) -> jax.Array:
  return constrain(x, ("batch", "act_length", "act_embed"))


def dense_init():
  return nn.initializers.xavier_uniform()


def partitioned(init, names):
  return nn.with_logical_partitioning(init, names)


def layer_norm(name: str | None = None, dtype: Any = jnp.float32, eps: float = LN_EPS
               ) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, name=name, dtype=dtype,
                      scale_init=partitioned(nn.initializers.ones, ("embed",)),
                      bias_init=partitioned(nn.initializers.zeros, ("embed",)))


def attention_implementation(choice: str, dtype: Any, masked: bool) -> str | None:
  """jax.nn.dot_product_attention's `implementation` for a config.model.attention choice.

  "auto" takes cuDNN's fused (flash) attention where it applies: on an NVIDIA GPU of compute
  capability 8.0+ (A100, H100, ...), in bfloat16/float16, without a padding mask (the image
  tower); XLA's attention otherwise (CPU, TPU, float32, the text tower). "xla" / "cudnn" force
  one (cudnn fails on other backends).
  """
  if choice != "auto":
    return choice
  if masked or jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return "xla"
  device = jax.devices()[0]
  capability = getattr(device, "compute_capability", None)
  if device.platform != "gpu" or capability is None:
    return "xla"
  return "cudnn" if float(capability) >= 8.0 else "xla"


class Attention(nn.Module):
  """Multi-head self-attention; `mask` is bool [b, 1, 1, t] (True = attend) or None."""
  num_heads: int
  options: TowerOptions = TowerOptions()

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    width = x.shape[-1]
    head_dim = width // self.num_heads

    dtype = self.options.dtype

    def proj(name):
      return nn.DenseGeneral(
          (self.num_heads, head_dim), name=name, dtype=dtype,
          kernel_init=partitioned(dense_init(), ("embed", "heads", "kv")),
          bias_init=partitioned(nn.initializers.zeros, ("heads", "kv")))

    names = ("batch", "act_length", "act_heads", "act_kv")
    q, k, v = (constrain(proj(name)(x), names) for name in ("query", "key", "value"))  # b t n h
    implementation = attention_implementation(self.options.attention, dtype, mask is not None)
    y = constrain(jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=self.options.causal,
                                               implementation=implementation), names)
    return nn.DenseGeneral(
        width, axis=(-2, -1), name="out", dtype=dtype,
        kernel_init=partitioned(dense_init(), ("heads", "kv", "embed")),
        bias_init=partitioned(nn.initializers.zeros, ("embed",)))(y)


class MlpBlock(nn.Module):
  mlp_dim: int
  dtype: Any = jnp.float32  # compute dtype
  act: str = "gelu"  # a key of ACTIVATIONS

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    x = nn.Dense(self.mlp_dim, name="fc1", dtype=self.dtype,
                 kernel_init=partitioned(dense_init(), ("embed", "mlp")),
                 bias_init=partitioned(nn.initializers.zeros, ("mlp",)))(x)
    x = ACTIVATIONS[self.act](constrain(x, ("batch", "act_length", "act_mlp")))
    return nn.Dense(width, name="fc2", dtype=self.dtype,
                    kernel_init=partitioned(dense_init(), ("mlp", "embed")),
                    bias_init=partitioned(nn.initializers.zeros, ("embed",)))(x)


class EncoderBlock(nn.Module):
  num_heads: int
  options: TowerOptions = TowerOptions()

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    o = self.options
    y = layer_norm("ln1", o.dtype, o.ln_eps)(x)
    x = x + Attention(self.num_heads, o, name="attn")(y, mask)
    y = layer_norm("ln2", o.dtype, o.ln_eps)(x)
    mlp = MlpBlock(int(x.shape[-1] * o.mlp_ratio), o.dtype, o.act, name="mlp")
    return constrain_tokens(x + mlp(y))


class _ScanBlock(EncoderBlock):
  """EncoderBlock in nn.scan's (carry, input) -> (carry, output) form."""

  def __call__(self, x, mask):  # pytype: disable=signature-mismatch
    return super().__call__(x, mask), None


class Encoder(nn.Module):
  """`depth` pre-LN blocks and a final LayerNorm."""
  depth: int
  num_heads: int
  options: TowerOptions = TowerOptions()

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    o = self.options
    x = constrain_tokens(x.astype(o.dtype))
    block_cls = _ScanBlock if o.scan else EncoderBlock
    if o.remat != "none":
      # prevent_cse is only needed outside scan (scan already keeps XLA from merging the
      # recomputation with the forward pass).
      block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[o.remat], prevent_cse=not o.scan)
    if o.scan:
      blocks = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=nn.broadcast, length=self.depth,
                       metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = blocks(self.num_heads, o, name="blocks")(x, mask)
    else:
      for i in range(self.depth):
        x = block_cls(self.num_heads, o, name=f"block{i:02d}")(x, mask)
    return layer_norm("ln_final", o.dtype, o.ln_eps)(x)
