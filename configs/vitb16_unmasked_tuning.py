"""Unmasked tuning of a FLIP B/16 pretraining run: the paper's second stage, as
configs/vitl16_unmasked_tuning.py (mask 0, 1/100 of the learning rate, ~1% of the pretraining
samples, a fresh optimizer state) for the ViT-B/16 model.

python -m flip.main --config=vitb16_unmasked_tuning --workdir=gs://BUCKET/vitb16_tuned \
    --config.init_from=gs://BUCKET/vitb16_mask50 \
    --config.input.data='wds:gs://BUCKET/laion400m/{00000..41407}.tar'
Append :local to run the same recipe shrunk on one CPU.
"""

from flip.configs import common
from flip.configs import vitl16_unmasked_tuning


def get_config(arg=None):
  c = vitl16_unmasked_tuning.get_config()
  common.set_model(c, "B/16")
  return common.apply_arg(c, arg)
