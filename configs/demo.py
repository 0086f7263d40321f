"""Tiny FLIP on the embedded flip_shapes data set: trains and evaluates on a laptop CPU.

python -m flip.main --config=configs/demo.py --workdir=/tmp/flip_demo
(installed: --config=demo)
"""

from flip import config_lib
from flip.configs import common


def get_config(arg=None):
  c = config_lib.base_config()
  c.mask_ratio = 0.5
  # 32 px images in 8 px patches: 16 patches, of which the image tower sees 8 at mask 0.5.
  c.model.image.update(patch_size=8, depth=4, width=128, num_heads=4)
  c.model.text.update(depth=1, width=128, num_heads=4)
  c.model.embed_dim = 128

  c.input.data = "tfds:flip_shapes"
  c.input.image_size = 32
  c.input.global_batch_size = 256
  c.input.shuffle_buffer = 20_000
  # The scenes are small and their objects fill little of the frame: crops below ~0.8 of the
  # area often cut away an object that the caption still names (the paper's recipe uses 0.5).
  c.input.crop_area_min = 0.8

  c.optim.base_lr = 1e-3  # lr = base_lr * batch / 256: 1e-3 at batch 256
  c.optim.weight_decay = 0.05
  c.optim.warmup_steps = 50
  c.total_steps = 2200  # ~560k samples, ~28 epochs of the 20k training scenes
  c.log_every_steps = 100
  c.checkpoint_every_steps = 500

  validation = dict(dataset="flip_shapes", split="validation")
  templates = ("a photo of a {}.", "a {}.", "an image of a {}.", "a picture of a {}.")
  c.evals.zeroshot = dict(type="zeroshot", templates=templates, every_steps=500, **validation)
  c.evals.retrieval = dict(type="retrieval", text_key="captions", every_steps=1100, **validation)
  c.evals.linear_probe = dict(type="linear_probe", dataset="flip_shapes", train_split="train",
                              max_train_examples=5000, test_split="validation", shots=(5,),
                              every_steps=2200)
  return common.apply_arg(c, arg)
