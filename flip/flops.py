"""Analytic FLOPs of a CLIP/FLIP train step: the "model FLOPs" of MFU.

Counts the matrix products (2 FLOPs per multiply-add) of the forward pass: patch embedding,
per block the q/k/v/out projections, the two attention products (scores and weighted values)
and the MLP, the two output projections and the contrastive logits (both directions, as the
sharded loss and open_clip's ClipLoss compute them). Elementwise work (LayerNorm, softmax, GELU,
the optimizer) is left out, as in the usual MFU definition. A train step is 3x the forward
(backward = two products per forward product), except the patch embedding, whose input needs no
gradient (2x). Rematerialised recomputation is not model FLOPs: XLA's count of a remat step is
higher by about the recomputed forward.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections


@dataclasses.dataclass(frozen=True)
class ClipShape:
  image_size: int
  patch_size: int
  image_width: int
  image_depth: int
  image_mlp_dim: int
  text_len: int
  text_width: int
  text_depth: int
  text_mlp_dim: int
  embed_dim: int
  class_token: bool = False  # FLIP pools by averaging; CLIP/open_clip prepend a class token
  embed_after_masking: bool = True  # FLIP here embeds only kept patches; open_clip embeds all

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "ClipShape":
    image, text = config.model.image, config.model.text
    return cls(image_size=config.input.image_size, patch_size=image.patch_size,
               image_width=image.width, image_depth=image.depth,
               image_mlp_dim=int(image.width * image.mlp_ratio),
               text_len=config.input.text_len, text_width=text.width, text_depth=text.depth,
               text_mlp_dim=int(text.width * text.mlp_ratio), embed_dim=config.model.embed_dim,
               class_token=image.class_token)

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  def kept_patches(self, mask_ratio: float) -> int:
    return int(self.num_patches * (1 - mask_ratio))  # vit.keep_length and open_clip's rule


def encoder_forward(tokens: int, width: int, depth: int, mlp_dim: int) -> float:
  """Forward FLOPs of `depth` pre-LN blocks on one sequence of `tokens` tokens."""
  projections = 2 * tokens * width * (4 * width)  # q, k, v and out
  attention = 2 * (2 * tokens * tokens * width)  # q.k^T and softmax.v over all heads
  mlp = 2 * (2 * tokens * width * mlp_dim)
  return depth * float(projections + attention + mlp)


def forward(shape: ClipShape, mask_ratio: float, batch: int) -> dict[str, float]:
  """Forward FLOPs of the step's parts for the whole batch."""
  kept = shape.kept_patches(mask_ratio)
  embedded = kept if shape.embed_after_masking else shape.num_patches
  patch_dim = shape.patch_size ** 2 * 3
  image_tokens = kept + int(shape.class_token)
  return {
      "patch_embed": batch * 2.0 * embedded * patch_dim * shape.image_width,
      "image": batch * (encoder_forward(image_tokens, shape.image_width, shape.image_depth,
                                        shape.image_mlp_dim)
                        + 2.0 * shape.image_width * shape.embed_dim),
      "text": batch * (encoder_forward(shape.text_len, shape.text_width, shape.text_depth,
                                       shape.text_mlp_dim)
                       + 2.0 * shape.text_width * shape.embed_dim),
      "loss": 2 * 2.0 * batch * batch * shape.embed_dim,
  }


def step_flops(shape: ClipShape, mask_ratio: float, batch: int) -> float:
  """Model FLOPs of one train step (forward + backward) on `batch` image-text pairs."""
  parts = forward(shape, mask_ratio, batch)
  return 3 * sum(parts.values()) - parts["patch_embed"]


def xla_step_flops(config: ml_collections.ConfigDict, mask_ratio: float,
                   mesh: jax.sharding.Mesh | None = None) -> float:
  """XLA's FLOPs count of a (resolved) config's train step (traced and lowered, not compiled).

  Lowered with unscanned towers: XLA counts a scanned loop's body once. Unlike `step_flops` it
  includes rematerialised recomputation and elementwise work; on GPUs it leaves out library
  (cuBLAS) matrix products. NaN where the backend gives no count.
  """
  # pylint: disable=g-import-not-at-top  (flax/optax: only here)
  from flip import sharding
  from flip import train_step as train_step_lib
  config = config.copy_and_resolve_references()
  config.model.scan_layers = False
  mesh = sharding.make_mesh(config.mesh) if mesh is None else mesh
  _, _, abstract, step_fn = train_step_lib.build(config, mesh, mask_ratio)
  cost = step_fn.lower(abstract, *train_step_lib.abstract_inputs(config, mesh)).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


# Dense datasheet peaks in FLOP/s per device, by compute dtype. float32 matrix products run as
# TF32 on NVIDIA GPUs and as bfloat16 passes on TPUs at JAX's default precision.
PEAK_FLOPS = {
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5e": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12},
    "TPU v6 lite": {"bfloat16": 918e12, "float32": 918e12},
    "H200": {"bfloat16": 989e12, "float32": 494.5e12},
    "H100": {"bfloat16": 989e12, "float32": 494.5e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
}


def datasheet_peak(device_kind: str, dtype: str) -> float | None:
  """The dense datasheet peak of a device (its JAX device_kind or torch device name) at a
  compute dtype, None where it is not listed (CPUs)."""
  for name, peaks in PEAK_FLOPS.items():
    if name.lower() in device_kind.lower():
      return peaks[dtype]
  return None
