"""Image<->text retrieval recall@1/5/10 with several captions per image (COCO/Flickr30k style)."""

from __future__ import annotations

import numpy as np

from flip.evaluation import data as data_lib
from flip.evaluation import embed
from flip.evaluation import metrics


class Retrieval:
  """Options (defaults in flip.config_lib.EVALUATORS["retrieval"]): dataset, split, text_key
  ("captions"; e.g. "captions/text" for coco_captions), image_key, data_dir, captions_per_image
  (extra ones are cut, empty ones dropped), max_examples, ks, mask_ratio (0: full images; >0:
  masked inference)."""

  def __init__(self, embedder: embed.Embedder, *, image_size: int, dataset: str, split: str,
               text_key: str, image_key: str, data_dir: str | None, captions_per_image: int,
               max_examples: int | None, ks: tuple[int, ...], mask_ratio: float):
    self.embedder = embedder
    self.ks = tuple(ks)
    self.mask_ratio = mask_ratio
    data = data_lib.EvalSplit(dataset, split, data_dir, image_key, image_size, keys=(text_key,),
                              max_examples=max_examples, captions_per_image=captions_per_image)
    examples = data.all()
    self.images = examples["image"]
    captions = examples[text_key]
    if captions.ndim == 1:
      captions = captions[:, None]
    image_of = np.repeat(np.arange(len(self.images)), captions.shape[1])
    keep = np.array([len(c.strip()) > 0 for c in captions.reshape(-1)])
    self.captions = [c.decode("utf-8") for c in captions.reshape(-1)[keep]]
    self.text_to_image = image_of[keep]

  def __call__(self, params) -> dict[str, float]:
    return metrics.retrieval(self.embedder.images(params, self.images, self.mask_ratio),
                             self.embedder.texts(params, self.captions), self.text_to_image,
                             self.ks)
