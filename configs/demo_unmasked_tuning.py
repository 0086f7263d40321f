"""Unmasked tuning of the demo model (configs/demo.py): the second stage in miniature.

python -m flip.main --config=configs/demo.py --workdir=/tmp/flip_demo
python -m flip.main --config=configs/demo_unmasked_tuning.py --workdir=/tmp/flip_demo_tuned \
    --config.init_from=/tmp/flip_demo
(or both stages at once: python tools/two_stage.py --workdir=/tmp/flip_two_stage)
"""

from flip.configs import common
from flip.configs import demo


def get_config(arg=None):
  c = demo.get_config()
  c.stage = "tune"
  c.mask_ratio = 0.0
  # The paper tunes for ~1% of the pretraining samples at 1/100 of its learning rate; the demo's
  # short run needs relatively more: ~10% of its samples at 1/10 of the rate.
  c.optim.base_lr = 1e-4
  c.optim.warmup_steps = 20
  c.total_steps = 200
  c.checkpoint_every_steps = 100
  for ev in c.evals.values():
    ev.every_steps = 200
  return common.apply_arg(c, arg)
