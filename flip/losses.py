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
