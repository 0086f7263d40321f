"""Linear probe on frozen image features: full and k-shot, by closed-form ridge regression."""

from __future__ import annotations

import numpy as np

from flip.evaluation import data as data_lib
from flip.evaluation import embed
from flip.evaluation import metrics


class LinearProbe:
  """Options (defaults in flip.config_lib.EVALUATORS["linear_probe"]): dataset, train_split,
  test_split, label_key, image_key, data_dir, max_train_examples, max_test_examples, shots
  (k-shot variants, e.g. (1, 5, 10)), full (also the probe on all the training features),
  l2_regs, seed, mask_ratio (0: full images; >0: features of masked images)."""

  def __init__(self, embedder: embed.Embedder, *, image_size: int, dataset: str,
               train_split: str, test_split: str, label_key: str, image_key: str,
               data_dir: str | None, max_train_examples: int | None,
               max_test_examples: int | None, shots: tuple[int, ...], full: bool,
               l2_regs: tuple[float, ...], seed: int, mask_ratio: float):
    self.embedder = embedder
    self.label_key = label_key
    self.train = data_lib.EvalSplit(dataset, train_split, data_dir, image_key, image_size,
                                    keys=(label_key,), max_examples=max_train_examples)
    self.test = data_lib.EvalSplit(dataset, test_split, data_dir, image_key, image_size,
                                   keys=(label_key,), max_examples=max_test_examples)
    self.num_classes = len(self.train.class_names(label_key))
    self.shots = tuple(shots)
    self.full = full
    self.l2_regs = tuple(l2_regs)
    self.seed = seed
    self.mask_ratio = mask_ratio

  def _features(self, params, split: data_lib.EvalSplit):
    feats, labels = [], []
    for chunk in split.chunks():
      feats.append(self.embedder.images(params, chunk["image"], self.mask_ratio))
      labels.append(chunk[self.label_key])
    return np.concatenate(feats), np.concatenate(labels)

  def __call__(self, params) -> dict[str, float]:
    train_x, train_y = self._features(params, self.train)
    test_x, test_y = self._features(params, self.test)
    out = {}
    if self.full:
      out["top1"] = metrics.ridge_probe(train_x, train_y, test_x, test_y, self.num_classes,
                                        self.l2_regs, self.seed)["top1"]
    for k in self.shots:
      rows = metrics.few_shot_indices(train_y, k, self.seed)
      out[f"{k}shot_top1"] = metrics.ridge_probe(train_x[rows], train_y[rows], test_x, test_y,
                                                 self.num_classes, self.l2_regs,
                                                 self.seed)["top1"]
    return out
