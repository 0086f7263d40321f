"""Linear probe on frozen image features: full and k-shot, by closed-form ridge regression."""

from __future__ import annotations

import ml_collections
import numpy as np

from flip.evaluation import data as data_lib
from flip.evaluation import encode
from flip.evaluation import metrics


class LinearProbe:
  """Config: dataset, train_split ("train"), test_split ("test"), label_key ("label"),
  image_key, data_dir, max_train_examples (50,000), max_test_examples, shots (k-shot variants,
  e.g. (1, 5, 10)), full (True: also the probe on all the training features), l2_regs, seed,
  mask_ratio (0: full images; >0: features of masked images)."""

  def __init__(self, ev: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
               encoder: encode.Encoder):
    self.encoder = encoder
    self.label_key = ev.get("label_key", "label")
    data_dir = ev.get("data_dir") or config.input.data_dir
    image_key = ev.get("image_key", "image")
    self.train = data_lib.EvalSplit(ev.dataset, ev.get("train_split", "train"), data_dir,
                                    image_key, config.input.image_size, keys=(self.label_key,),
                                    max_examples=ev.get("max_train_examples", 50_000))
    self.test = data_lib.EvalSplit(ev.dataset, ev.get("test_split", "test"), data_dir,
                                   image_key, config.input.image_size, keys=(self.label_key,),
                                   max_examples=ev.get("max_test_examples"))
    self.num_classes = len(self.train.class_names(self.label_key))
    self.shots = tuple(ev.get("shots", ()))
    self.full = ev.get("full", True)
    self.l2_regs = tuple(ev.get("l2_regs", (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)))
    self.seed = ev.get("seed", 0)
    self.mask_ratio = encode.mask_ratio(ev)

  def _features(self, params, split: data_lib.EvalSplit):
    feats, labels = [], []
    for chunk in split.chunks():
      feats.append(self.encoder.images(params, chunk["image"], self.mask_ratio))
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
