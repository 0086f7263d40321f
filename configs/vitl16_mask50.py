"""FLIP L/16 pretraining at mask ratio 0.5, the paper's main model: the paper's recipe (its
Table 9 and training recipe).

python -m flip.main --config=vitl16_mask50 --workdir=gs://BUCKET/vitl16_mask50 \
    --config.input.data='wds:gs://BUCKET/laion400m/{00000..41407}.tar'
(or --config=configs/vitl16_mask50.py in a checkout). Append :local (vitl16_mask50:local) to run
the same recipe shrunk on one CPU.
"""

from flip import config_lib
from flip.configs import common


def get_config(arg=None):
  c = config_lib.base_config()
  # ViT-L/16 (24 x 1024, 16 heads) + text 12 x 768 (12 heads), embed 768
  common.set_model(c, "L/16")
  c.mask_ratio = 0.5
  c.input.image_size = 224
  c.input.text_len = 32  # WordPiece, BERT-base uncased vocabulary
  c.input.global_batch_size = 65536
  c.optim.base_lr = 4e-6  # lr = base_lr x batch / 256 = 1.024e-3
  c.optim.update(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.2)  # AdamW
  c.optim.warmup_samples = 51_200_000
  c.total_samples = 12_800_000_000  # cosine decay to 0; ~32 epochs of LAION-400M
  common.paper_memory(c)  # FSDP over all devices, full remat in both towers
  common.paper_evals(c, every_steps=5000)  # ImageNet zero-shot, COCO retrieval
  return common.apply_arg(c, arg)
