"""Unmasked tuning of a FLIP L/16 pretraining run: the paper's second stage (mask 0, 1/100 of
the learning rate, ~1% of the pretraining samples, a fresh optimizer state).

python -m flip.main --config=vitl16_unmasked_tuning --workdir=gs://BUCKET/vitl16_tuned \
    --config.init_from=gs://BUCKET/vitl16_mask50 \
    --config.input.data='wds:gs://BUCKET/laion400m/{00000..41407}.tar'
Append :local to run the same recipe shrunk on one CPU.
"""

from flip.configs import common
from flip.configs import vitl16_mask50


def get_config(arg=None):
  c = vitl16_mask50.get_config()  # the pretraining recipe's model, data and evaluations
  c.stage = "tune"  # parameters from config.init_from (a pretraining workdir)
  c.mask_ratio = 0.0
  c.optim.base_lr = 4e-8  # 1.024e-5 at the 64k batch
  c.optim.warmup_samples = 25_600_000
  c.total_samples = 128_000_000  # 0.32 epoch of LAION-400M
  c.checkpoint_every_steps = 500
  for ev in c.evals.values():
    ev.every_steps = 1000
  return common.apply_arg(c, arg)
