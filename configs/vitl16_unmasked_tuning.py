"""Unmasked tuning of a FLIP L/16 pretraining run (the paper's second stage; see
flip.config_lib.tuning_config): mask 0, base lr 4e-8, ~128M samples, fresh optimizer state.

python -m flip.main --config=configs/vitl16_unmasked_tuning.py --workdir=gs://BUCKET/vitl16_tuned \
    --config.init_from=gs://BUCKET/vitl16_mask50 \
    --config.input.data='wds:gs://BUCKET/laion400m/{00000..41407}.tar'
Append :local to the config path to run the same recipe shrunk on one CPU.
"""

from flip import config_lib


def get_config(arg=None):
  return config_lib.apply_arg(config_lib.tuning_config("L/16"), arg)
