"""Unmasked tuning of a FLIP H/14 pretraining run: the paper's second stage, as
configs/vitl16_unmasked_tuning.py (mask 0, 1/100 of the learning rate, ~1% of the pretraining
samples, a fresh optimizer state) for the ViT-H/14 model.

python -m flip.main --config=vith14_unmasked_tuning --workdir=gs://BUCKET/vith14_tuned \
    --config.init_from=gs://BUCKET/vith14_mask50 \
    --config.input.data='wds:gs://BUCKET/laion400m/{00000..41407}.tar'
Append :local to run the same recipe shrunk on one CPU.
"""

from flip.configs import common
from flip.configs import vitl16_unmasked_tuning


def get_config(arg=None):
  c = vitl16_unmasked_tuning.get_config()
  common.set_model(c, "H/14")
  return common.apply_arg(c, arg)
