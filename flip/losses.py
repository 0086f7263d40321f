"""Symmetric InfoNCE (the CLIP/FLIP contrastive loss) over the global batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def infonce(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array) -> jax.Array:
  """Mean of image->text and text->image cross-entropy; pair i is the positive of row i.

  image_emb, text_emb: L2-normalised [B, d] over the *global* batch (under jit with batch-sharded
  inputs, XLA gathers what it needs). logit_scale: the clipped log-temperature.
  """
  logits = jnp.exp(logit_scale) * image_emb @ text_emb.T  # [B_img, B_txt]
  labels = jnp.arange(logits.shape[0])
  i2t = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  t2i = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
  return 0.5 * (i2t.mean() + t2i.mean())


def sharded_infonce(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array,
                    mesh: jax.sharding.Mesh, batch_axes: tuple[str, ...] = ("data", "fsdp")
                    ) -> jax.Array:
  """infonce with the logits computed blockwise: each device holds only its rows.

  Each device all-gathers the other tower's embeddings and computes its [local_batch,
  global_batch] blocks of the image->text and text->image logits, so memory is
  O(local x global) instead of O(global^2); the losses of the local rows are summed over the batch
  axes. Gradients flow back through the all-gather (its transpose is a reduce-scatter). Equal to
  `infonce` on the global batch up to float summation order.
  """
  spec = jax.sharding.PartitionSpec(batch_axes)

  def local(img, txt, scale):
    all_img = jax.lax.all_gather(img, batch_axes, axis=0, tiled=True)
    all_txt = jax.lax.all_gather(txt, batch_axes, axis=0, tiled=True)
    labels = jax.lax.axis_index(batch_axes) * img.shape[0] + jnp.arange(img.shape[0])
    t = jnp.exp(scale)
    i2t = optax.softmax_cross_entropy_with_integer_labels(t * img @ all_txt.T, labels)
    t2i = optax.softmax_cross_entropy_with_integer_labels(t * txt @ all_img.T, labels)
    total = jax.lax.psum(i2t.sum() + t2i.sum(), batch_axes)
    return total / (2 * all_img.shape[0])

  return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, jax.sharding.PartitionSpec()),
                       out_specs=jax.sharding.PartitionSpec())(image_emb, text_emb, logit_scale)
