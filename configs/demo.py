"""Tiny FLIP on the embedded flip_shapes data set: trains and evaluates on a laptop CPU.

python -m flip.main --config=configs/demo.py --workdir=/tmp/flip_demo
"""

from flip import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.mask_ratio = 0.5
  c.model.image.update(patch_size=4, depth=4, width=128, num_heads=4)
  c.model.text.update(depth=2, width=128, num_heads=4)
  c.model.embed_dim = 128

  c.input.dataset = "flip_shapes"
  c.input.image_size = 32
  c.input.global_batch_size = 256
  c.input.shuffle_buffer = 20_000
  c.input.cache = True

  c.optim.base_lr = 1e-3  # lr = base_lr * batch / 256: 1e-3 at batch 256
  c.optim.weight_decay = 0.05
  c.optim.warmup_steps = 50
  c.total_steps = 600
  c.log_every_steps = 50
  c.checkpoint_every_steps = 200

  validation = dict(dataset="flip_shapes", split="validation", every_steps=200)
  c.evals.zeroshot = dict(type="zeroshot", templates=("a photo of a {}.",), **validation)
  c.evals.retrieval = dict(type="retrieval", text_key="captions", **validation)
  return config_lib.apply_arg(c, arg)
