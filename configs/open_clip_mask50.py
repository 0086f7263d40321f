"""Masked fine-tuning (FLIP, 50% of the patches dropped) of an imported open_clip / OpenAI CLIP
model: its architecture (the config arg names the open_clip model), its weights (init_from).

python tools/import_weights.py --format=open_clip --model=ViT-B-16 \
    --checkpoint=open_clip_pytorch_model.bin --workdir=gs://BUCKET/vitb16_laion2b
python -m flip.main --config=open_clip_mask50:ViT-B-16 --workdir=gs://BUCKET/vitb16_flip_ft \
    --config.init_from=gs://BUCKET/vitb16_laion2b \
    --config.input.data='wds:gs://BUCKET/laion400m/{00000..41407}.tar'
The arg is the open_clip model name (or its JSON config; default ViT-B-16), then optionally
,mask=<ratio>; :local trains the same architecture family shrunk on one CPU (no init_from). The
class token is never masked. A fresh optimizer state and the paper's recipe otherwise, at the
peak learning rate of its unmasked tuning stage (1.024e-5) and 400M samples: fine-tuning a
trained model, not pretraining one.
"""

from flip.configs import common
from flip.configs import vitl16_mask50
from flip.formats import open_clip


def get_config(arg=None):
  items = [item.strip() for item in (arg or "").split(",") if item.strip()]
  model = items.pop(0) if items and "=" not in items[0] and items[0] != "local" else "ViT-B-16"
  c = vitl16_mask50.get_config()  # the paper's optimizer, data and evaluations
  open_clip.apply(c, open_clip.model_config(model))
  c.mask_ratio = 0.5
  c.input.global_batch_size = 32768
  c.optim.base_lr = 8e-8  # 1.024e-5 at the 32k batch
  c.optim.warmup_samples = 25_600_000
  c.total_samples = 400_000_000  # one epoch of LAION-400M
  c.checkpoint_every_steps = 500
  for ev in c.evals.values():
    ev.every_steps = 1000
  # :local keeps the architecture family (class token, causal BPE text tower, ...) at CPU size.
  return common.apply_arg(c, ",".join(items))
