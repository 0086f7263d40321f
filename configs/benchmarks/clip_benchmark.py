"""The usual zero-shot suite of CLIP papers, as open_clip's and CLIP_benchmark's tables report it.

`--tasks=clip_benchmark` (or `:wds`): LAION's CLIP_benchmark webdataset sets, downloaded into one
folder `--tasks.wds_root=DIR` (DIR/wds_imagenet1k, DIR/wds_flickr30k, ...; the README says how).
Class names and prompt templates come from each set's own files, as in CLIP_benchmark.

`--tasks=clip_benchmark:tfds`: the TFDS versions (`--tasks.data_dir=` their data_dir), with
CLIP's curated ImageNet class names and 80 templates. ImageNet-A and -R are left out there: their
TFDS labels index all 1,000 ImageNet classes, while CLIP and CLIP_benchmark score their 200.
"""

import ml_collections
from ml_collections import config_dict


def _wds_tasks():
  def zeroshot(name):
    return dict(type="zeroshot", dataset="wds:{wds_root}/" + name, split="test")

  def retrieval(name):
    return dict(type="retrieval", dataset="wds:{wds_root}/" + name, split="test")

  return {
      "imagenet1k": zeroshot("wds_imagenet1k"),
      "imagenetv2": zeroshot("wds_imagenetv2"),
      "imagenet-a": zeroshot("wds_imagenet-a"),
      "imagenet-r": zeroshot("wds_imagenet-r"),
      "imagenet_sketch": zeroshot("wds_imagenet_sketch"),
      "cifar10": zeroshot("wds_cifar10"),
      "cifar100": zeroshot("wds_vtab-cifar100"),
      "mscoco_captions": retrieval("wds_mscoco_captions"),  # the Karpathy 5k test split
      "flickr30k": retrieval("wds_flickr30k"),  # the Karpathy 1k test split
  }


def _tfds_tasks():
  imagenet = dict(type="zeroshot", class_names="imagenet", templates="clip80")
  return {
      "imagenet1k": dict(imagenet, dataset="imagenet2012", split="validation"),
      "imagenetv2": dict(imagenet, dataset="imagenet_v2", split="test"),
      "imagenet_sketch": dict(imagenet, dataset="imagenet_sketch", split="test"),
      "cifar10": dict(type="zeroshot", dataset="cifar10", split="test", templates="clip80"),
      "cifar100": dict(type="zeroshot", dataset="cifar100", split="test", templates="clip80"),
      # TFDS's coco_captions splits are Karpathy's: its test split is the usual 5k images.
      "mscoco_captions": dict(type="retrieval", dataset="coco_captions", split="test",
                              text_key="captions/text"),
      "cifar10_linear_probe": dict(type="linear_probe", dataset="cifar10", train_split="train",
                                   test_split="test", method="logistic"),
  }


def get_config(arg=None):
  c = ml_collections.ConfigDict(sort_keys=False)  # tasks run and are listed in this order
  c.wds_root = config_dict.placeholder(str)  # the folder holding the wds_* sets
  c.data_dir = config_dict.placeholder(str)  # TFDS data_dir (None: TFDS's default)
  if arg in (None, "", "wds"):
    c.tasks = ml_collections.ConfigDict(_wds_tasks(), sort_keys=False)
  elif arg == "tfds":
    c.tasks = ml_collections.ConfigDict(_tfds_tasks(), sort_keys=False)
  else:
    raise ValueError(f"clip_benchmark:{arg}: use clip_benchmark (webdataset sets) or "
                     "clip_benchmark:tfds.")
  return c
