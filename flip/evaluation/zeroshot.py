"""Zero-shot classification: class embeddings from prompts, nearest class per image."""

from __future__ import annotations

import ml_collections
import numpy as np

from flip.data import pipeline
from flip.evaluation import encode


def class_embeddings(encoder: encode.Encoder, params, class_names, templates) -> np.ndarray:
  """Mean of the normalised prompt embeddings of each class, normalised again: [classes, d]."""
  prompts = [t.format(name) for name in class_names for t in templates]
  emb = encoder.texts(params, prompts).reshape(len(class_names), len(templates), -1).mean(axis=1)
  return emb / np.linalg.norm(emb, axis=-1, keepdims=True)


def accuracy(image_emb: np.ndarray, class_emb: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.argmax(image_emb @ class_emb.T, axis=1) == labels))


class ZeroShot:
  """Top-1 accuracy of "a photo of a {class}"-style prompts on a TFDS classification split."""

  def __init__(self, ev: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
               encoder: encode.Encoder):
    self.encoder = encoder
    data_dir = ev.get("data_dir") or config.input.data_dir
    self.templates = tuple(ev.templates)
    label_key = ev.get("label_key", "label")
    self.examples = pipeline.eval_examples(ev.dataset, ev.split, data_dir,
                                           ev.get("image_key", "image"), config.input.image_size,
                                           keys=(label_key,))
    self.labels = self.examples.pop(label_key)
    feature = pipeline.builder(ev.dataset, data_dir).info.features[label_key]
    self.class_names = [n.replace("_", " ") for n in feature.names]

  def __call__(self, params) -> dict[str, float]:
    image_emb = self.encoder.images(params, self.examples["image"])
    class_emb = class_embeddings(self.encoder, params, self.class_names, self.templates)
    return {"top1": accuracy(image_emb, class_emb, self.labels)}
