"""Zero-shot classification: class embeddings from prompts, nearest class per image."""

from __future__ import annotations

import ml_collections
import numpy as np

from flip.evaluation import data as data_lib
from flip.evaluation import encode
from flip.evaluation import metrics
from flip.evaluation import prompts


def class_embeddings(encoder: encode.Encoder, params, class_names, templates) -> np.ndarray:
  """Mean of the normalised prompt embeddings of each class, normalised again: [classes, d]."""
  return prompts.class_embeddings(lambda texts: encoder.texts(params, texts), class_names,
                                  templates)


class ZeroShot:
  """Top-1, top-5 and mean per-class recall of prompt-based classification of a TFDS split.

  Config: dataset, split, label_key ("label"), image_key ("image"), data_dir, templates ("short":
  CLIP's 7, "clip80": its 80, or a list), class_names (None: the data set's; "imagenet": CLIP's
  curated ImageNet names; or a list), max_examples, mask_ratio (0: full images; >0: masked
  inference, the paper's ablation).
  """

  def __init__(self, ev: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
               encoder: encode.Encoder):
    self.encoder = encoder
    self.label_key = ev.get("label_key", "label")
    self.data = data_lib.EvalSplit(
        ev.dataset, ev.get("split", "test"), ev.get("data_dir") or config.input.data_dir,
        ev.get("image_key", "image"), config.input.image_size, keys=(self.label_key,),
        max_examples=ev.get("max_examples"))
    self.class_names = prompts.class_names(ev.get("class_names"),
                                           self.data.class_names(self.label_key))
    self.templates = prompts.templates(ev.get("templates", "short"))
    self.mask_ratio = encode.mask_ratio(ev)

  def __call__(self, params) -> dict[str, float]:
    class_emb = class_embeddings(self.encoder, params, self.class_names, self.templates)
    scores, labels = [], []
    for chunk in self.data.chunks():
      scores.append(self.encoder.images(params, chunk["image"], self.mask_ratio) @ class_emb.T)
      labels.append(chunk[self.label_key])
    return metrics.classification(np.concatenate(scores), np.concatenate(labels), ks=(1, 5))
