"""Image<->text retrieval recall@1/5/10 with several captions per image (COCO/Flickr30k style)."""

from __future__ import annotations

import ml_collections
import numpy as np

from flip.evaluation import data as data_lib
from flip.evaluation import encode
from flip.evaluation import metrics


class Retrieval:
  """Config: dataset, split, text_key ("captions"; e.g. "captions/text" for coco_captions),
  image_key, data_dir, captions_per_image (5: extra ones are cut, empty ones dropped),
  max_examples, ks ((1, 5, 10)), mask_ratio (0: full images; >0: masked inference)."""

  def __init__(self, ev: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
               encoder: encode.Encoder):
    self.encoder = encoder
    self.ks = tuple(ev.get("ks", (1, 5, 10)))
    self.mask_ratio = encode.mask_ratio(ev)
    text_key = ev.get("text_key", "captions")
    data = data_lib.EvalSplit(
        ev.dataset, ev.get("split", "test"), ev.get("data_dir") or config.input.data_dir,
        ev.get("image_key", "image"), config.input.image_size, keys=(text_key,),
        max_examples=ev.get("max_examples"), captions_per_image=ev.get("captions_per_image", 5))
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
    return metrics.retrieval(self.encoder.images(params, self.images, self.mask_ratio),
                             self.encoder.texts(params, self.captions), self.text_to_image,
                             self.ks)
