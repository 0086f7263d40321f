"""The suite on the embedded data set flip_shapes (what the README's example table shows): zero-shot
classification, retrieval and CLIP's logistic-regression probe of a demo run."""

import ml_collections
from ml_collections import config_dict


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict(sort_keys=False)  # tasks run and are listed in this order
  c.wds_root = config_dict.placeholder(str)
  c.data_dir = config_dict.placeholder(str)
  templates = ("a photo of a {}.", "a {}.", "an image of a {}.", "a picture of a {}.")
  c.tasks = ml_collections.ConfigDict(sort_keys=False)
  c.tasks.update({
      "shapes_zeroshot": dict(type="zeroshot", dataset="flip_shapes", split="test",
                              templates=templates),
      "shapes_retrieval": dict(type="retrieval", dataset="flip_shapes", split="test"),
      "shapes_linear_probe": dict(type="linear_probe", dataset="flip_shapes",
                                  train_split="train", max_train_examples=5000,
                                  test_split="test", method="logistic"),
  })
  return c
