"""FLIP L/16 pretraining at mask ratio 0.5 (the paper's recipe; see flip.config_lib.paper_config).

python -m flip.main --config=configs/vitl16_mask50.py --workdir=gs://BUCKET/vitl16_mask50 \
    --config.input.data='wds:gs://BUCKET/laion400m/{00000..41407}.tar'
Append :local to the config path to run the same recipe shrunk on one CPU.
"""

from flip import config_lib


def get_config(arg=None):
  return config_lib.apply_arg(config_lib.paper_config("L/16", mask_ratio=0.5), arg)
