"""FLIP L/16 pretraining at mask ratio 0.75: the paper's recipe (configs/vitl16_mask50.py) with
what differs.

python -m flip.main --config=vitl16_mask75 --workdir=gs://BUCKET/vitl16_mask75 \
    --config.input.data='wds:gs://BUCKET/laion400m/{00000..41407}.tar'
(or --config=configs/vitl16_mask75.py in a checkout). Append :local (vitl16_mask75:local) to run
the same recipe shrunk on one CPU.
"""

from flip.configs import common
from flip.configs import vitl16_mask50


def get_config(arg=None):
  c = vitl16_mask50.get_config()  # the paper's recipe for L/16
  c.mask_ratio = 0.75  # the image tower sees 49 of the 196 patches
  return common.apply_arg(c, arg)
