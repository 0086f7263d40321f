"""Linear probe on frozen image features: CLIP's logistic regression or a closed-form ridge probe,
on all the training features and k-shot subsets."""

from __future__ import annotations

import numpy as np

from flip.evaluation import data as data_lib
from flip.evaluation import embed
from flip.evaluation import logistic
from flip.evaluation import metrics

METHODS = ("ridge", "logistic")


class LinearProbe:
  """Options (defaults in flip.config_lib.EVALUATORS["linear_probe"]): dataset (a TFDS name or
  `wds:<root>`), train_split, test_split, label_key, image_key, data_dir, max_train_examples,
  max_test_examples, method ("ridge": regularised least squares, closed form, L2 chosen among
  l2_regs; "logistic": CLIP's protocol, flip/evaluation/logistic.py, C chosen on val_split or a
  held-out fifth of the training features), val_split, shots (k-shot variants, e.g. (1, 5, 10)),
  full (also the probe on all the training features), l2_regs, seed, mask_ratio (0: full images;
  >0: features of masked images).

  Metrics: acc1 (and, for logistic, acc5, mean_per_class_recall and the chosen C), {k}shot_acc1.
  """

  def __init__(self, embedder: embed.Embedder, *, image_size: int, dataset: str,
               train_split: str, test_split: str, label_key: str, image_key: str,
               data_dir: str | None, max_train_examples: int | None,
               max_test_examples: int | None, method: str, val_split: str | None,
               shots: tuple[int, ...], full: bool, l2_regs: tuple[float, ...], seed: int,
               mask_ratio: float):
    self.embedder = embedder

    def split(name, max_examples):
      return data_lib.open_split(dataset, name, data_dir, image_size, image_key=image_key,
                                 label_key=label_key, max_examples=max_examples)

    self.train = split(train_split, max_train_examples)
    self.test = split(test_split, max_test_examples)
    self.val = split(val_split, max_test_examples) if val_split else None
    self.num_classes = len(self.train.class_names())
    self.method = method
    self.shots = tuple(shots)
    self.full = full
    self.l2_regs = tuple(l2_regs)
    self.seed = seed
    self.mask_ratio = mask_ratio

  def _features(self, params, split: data_lib.Split):
    feats, labels = [], []
    for chunk in split.chunks():
      feats.append(self.embedder.images(params, chunk["image"], self.mask_ratio))
      labels.append(chunk["label"])
    return np.concatenate(feats), np.concatenate(labels)

  def _probe(self, train_x, train_y, test_x, test_y, val) -> dict[str, float]:
    if self.method == "logistic":
      return logistic.probe(train_x, train_y, test_x, test_y, self.num_classes, val, self.seed)
    out = metrics.ridge_probe(train_x, train_y, test_x, test_y, self.num_classes, self.l2_regs,
                              self.seed)
    return {"acc1": out["acc1"]}

  def __call__(self, params) -> dict[str, float]:
    train_x, train_y = self._features(params, self.train)
    test_x, test_y = self._features(params, self.test)
    val = self._features(params, self.val) if self.val is not None else None
    out = {}
    if self.full:
      out.update(self._probe(train_x, train_y, test_x, test_y, val))
    for k in self.shots:
      rows = metrics.few_shot_indices(train_y, k, self.seed)
      out[f"{k}shot_acc1"] = self._probe(train_x[rows], train_y[rows], test_x, test_y,
                                         val)["acc1"]
    return out
