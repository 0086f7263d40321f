"""Embedding many images or texts with the model, batch by batch, sharded over all devices."""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh

from flip import sharding
from flip.data import tokenizer as tokenizer_lib
from flip.models import flip as flip_lib


MASK_SEED = 1234


class Embedder:
  """Jitted `encode_image`/`encode_text` over padded global batches; returns numpy on every host.

  Every process passes the same full array; each contributes its own slice of every batch, and the
  last partial batch is padded then dropped, so each example is embedded exactly once.
  `images_embedded` counts the images embedded so far (for images/s figures).
  """

  def __init__(self, model: flip_lib.FLIP, tokenizer: tokenizer_lib.Tokenizer, mesh: Mesh,
               batch_size: int, rules=sharding.DEFAULT_LOGICAL_AXIS_RULES):
    self.tokenizer = tokenizer
    self.mesh = mesh
    self.images_embedded = 0
    ways = sharding.batch_ways(mesh) * jax.process_count()
    self.batch_size = max(ways, batch_size // ways * ways)
    out = sharding.replicated(mesh)

    def jit(fn, **kwargs):  # activations sharded like in training (config.logical_axis_rules)
      return jax.jit(sharding.with_activation_rules(fn, mesh, rules), out_shardings=out,
                     **kwargs)

    def encode_image(variables, images, rng, mask_ratio):
      return model.apply(variables, images, mask_ratio, method=flip_lib.FLIP.encode_image,
                         rngs={"mask": rng})

    self._image = jit(encode_image, static_argnames="mask_ratio")
    self._text = jit(functools.partial(model.apply, method=flip_lib.FLIP.encode_text))

  def _run(self, fn, params, data: np.ndarray, **kwargs) -> np.ndarray:
    n = len(data)
    local = self.batch_size // jax.process_count()
    start = jax.process_index() * local
    outputs = []
    for i in range(0, n, self.batch_size):
      chunk = data[i:i + self.batch_size]
      pad = self.batch_size - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
      batch = sharding.global_batch({"x": chunk[start:start + local]}, self.mesh)["x"]
      if "mask_ratio" in kwargs:  # a fixed, per-batch mask rng: evaluations are repeatable
        kwargs["rng"] = jax.random.fold_in(jax.random.key(MASK_SEED), i // self.batch_size)
      outputs.append(np.asarray(fn({"params": params}, batch, **kwargs))[:len(chunk) - pad])
    return np.concatenate(outputs)

  def images(self, params, images: np.ndarray, mask_ratio: float = 0.0) -> np.ndarray:
    """Image embeddings; mask_ratio > 0 drops that share of the patches (masked inference,
    the paper's ablation), with masks fixed per batch position so results repeat."""
    self.images_embedded += len(images)
    return self._run(self._image, params, images, mask_ratio=float(mask_ratio))

  def texts(self, params, texts: list[str]) -> np.ndarray:
    return self._run(self._text, params, self.tokenizer(texts))
