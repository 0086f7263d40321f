"""FLIP H/14 pretraining at mask ratio 0.5: the paper's recipe (configs/vitl16_mask50.py) with
what differs.

python -m flip.main --config=vith14_mask50 --workdir=gs://BUCKET/vith14_mask50 \
    --config.input.data='wds:gs://BUCKET/laion400m/{00000..41407}.tar'
(or --config=configs/vith14_mask50.py in a checkout). Append :local (vith14_mask50:local) to run
the same recipe shrunk on one CPU.
"""

from flip.configs import common
from flip.configs import vitl16_mask50


def get_config(arg=None):
  c = vitl16_mask50.get_config()  # the paper's recipe, as for its main model
  # ViT-H/14 (32 x 1280, 16 heads) + text 24 x 1024 (16 heads), embed 1024
  common.set_model(c, "H/14")
  c.optim.warmup_samples = 256_000_000  # H/14 warms up 5x longer (the paper's Table 9)
  return common.apply_arg(c, arg)
