"""FLIP B/16 pretraining at mask ratio 0.5: the paper's recipe (configs/vitl16_mask50.py) with
what differs.

python -m flip.main --config=vitb16_mask50 --workdir=gs://BUCKET/vitb16_mask50 \
    --config.input.data='wds:gs://BUCKET/laion400m/{00000..41407}.tar'
(or --config=configs/vitb16_mask50.py in a checkout). Append :local (vitb16_mask50:local) to run
the same recipe shrunk on one CPU.
"""

from flip.configs import common
from flip.configs import vitl16_mask50


def get_config(arg=None):
  c = vitl16_mask50.get_config()  # the paper's recipe, as for its main model
  # ViT-B/16 (12 x 768, 12 heads) + text 12 x 512 (8 heads), embed 512
  common.set_model(c, "B/16")
  return common.apply_arg(c, arg)
