"""Image<->text retrieval top-1 with several captions per image."""

from __future__ import annotations

import ml_collections
import numpy as np

from flip.data import pipeline
from flip.evaluation import encode


def recall_at_1(image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: np.ndarray
                ) -> dict[str, float]:
  """text_to_image[j] is the image caption j describes. An image query is a hit if its best
  caption is one of its own; a caption query is a hit if its best image is its own."""
  sims = image_emb @ text_emb.T  # images x captions
  i2t = text_to_image[np.argmax(sims, axis=1)] == np.arange(len(image_emb))
  t2i = np.argmax(sims, axis=0) == text_to_image
  return {"i2t_top1": float(i2t.mean()), "t2i_top1": float(t2i.mean())}


class Retrieval:
  def __init__(self, ev: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
               encoder: encode.Encoder):
    self.encoder = encoder
    data_dir = ev.get("data_dir") or config.input.data_dir
    text_key = ev.get("text_key", "captions")
    examples = pipeline.eval_examples(ev.dataset, ev.split, data_dir,
                                      ev.get("image_key", "image"), config.input.image_size,
                                      keys=(text_key,))
    self.images = examples["image"]
    captions = examples[text_key]
    if captions.ndim == 1:
      captions = captions[:, None]
    self.captions = [c.decode("utf-8") for c in captions.reshape(-1)]
    self.text_to_image = np.repeat(np.arange(len(self.images)), captions.shape[1])

  def __call__(self, params) -> dict[str, float]:
    return recall_at_1(self.encoder.images(params, self.images),
                       self.encoder.texts(params, self.captions), self.text_to_image)
