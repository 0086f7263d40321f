"""Zero-shot classification: class embeddings from prompts, nearest class per image."""

from __future__ import annotations

import numpy as np

from flip.evaluation import data as data_lib
from flip.evaluation import embed
from flip.evaluation import metrics
from flip.evaluation import prompts


def class_embeddings(embedder: embed.Embedder, params, class_names, templates) -> np.ndarray:
  """Mean of the normalised prompt embeddings of each class, normalised again: [classes, d]."""
  return prompts.class_embeddings(lambda texts: embedder.texts(params, texts), class_names,
                                  templates)


class ZeroShot:
  """acc1, acc5 and mean per-class recall of prompt-based classification of a split.

  Options (defaults in flip.config_lib.EVALUATORS["zeroshot"]): dataset (a TFDS name or
  `wds:<root>`, a CLIP_benchmark webdataset set), split, label_key, image_key, data_dir, templates
  (None: the set's own zeroshot_classification_templates.txt if it has one, else "short";
  "short": CLIP's 7; "clip80": its 80; or a list), class_names (None: the data set's, e.g. its
  classnames.txt; "imagenet": CLIP's curated ImageNet names; or a list), max_examples,
  mask_ratio (0: full images; >0: masked inference, the paper's ablation).
  """

  def __init__(self, embedder: embed.Embedder, *, image_size: int, dataset: str, split: str,
               label_key: str, image_key: str, data_dir: str | None, templates, class_names,
               max_examples: int | None, mask_ratio: float):
    self.embedder = embedder
    self.data = data_lib.open_split(dataset, split, data_dir, image_size, image_key=image_key,
                                    label_key=label_key, max_examples=max_examples)
    self.class_names = prompts.class_names(class_names, self.data.class_names())
    if templates is None:
      templates = self.data.templates() or "short"
    self.templates = prompts.templates(templates)
    self.mask_ratio = mask_ratio

  def __call__(self, params) -> dict[str, float]:
    class_emb = class_embeddings(self.embedder, params, self.class_names, self.templates)
    scores, labels = [], []
    for chunk in self.data.chunks():
      scores.append(self.embedder.images(params, chunk["image"], self.mask_ratio) @ class_emb.T)
      labels.append(chunk["label"])
    return metrics.classification(np.concatenate(scores), np.concatenate(labels), ks=(1, 5))
