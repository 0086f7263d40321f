"""open_clip's training step, timed the way tools/benchmark.py times ours (the `--peer open_clip`).

What is timed is what open_clip's own training loop (open_clip_train.train.train_one_epoch) does
per step at float32: `model(images, texts)`, `ClipLoss`, `loss.backward()`, `AdamW.step()` with
open_clip's parameter groups (no weight decay on gains, biases, embeddings and the temperature),
`zero_grad` and the clamp of the logit scale. The model is open_clip's own `ViT-B-16` (or any
model name it knows) with `patch_dropout` = the mask ratio and the text context set to our text
length, so both sides do the same work per image; no pretrained weights are read.

Needs `pip install -r requirements-peer.txt` (torch, torchvision, open-clip-torch).
"""

from __future__ import annotations

import importlib.util
import math
import time

from flip import errors
from flip import flops


def available() -> bool:
  """Whether open_clip and torch can be imported (imports them: not beside TensorFlow, with
  which torch's CUDA build may crash a process; `installed()` only looks)."""
  try:
    import open_clip  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def installed() -> bool:
  """Whether the open_clip and torch packages are installed (nothing is imported)."""
  return all(importlib.util.find_spec(name) is not None for name in ("open_clip", "torch"))


def require():
  if not available():
    raise errors.ConfigError("--peer=open_clip needs the open-clip-torch package (and torch): "
                             "`.venv/bin/pip install -r requirements-peer.txt`.")


def _optimizer(model, torch, lr=1e-4, weight_decay=0.2):
  """open_clip_train.main's AdamW: gains/biases/embeddings/logit_scale get no weight decay."""
  def exclude(name, p):
    return (p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name)
  named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
  return torch.optim.AdamW(
      [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
       {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay}],
      lr=lr, betas=(0.9, 0.98), eps=1e-6)


def time_step(model_name: str, batch: int, mask_ratio: float, image_size: int, text_len: int,
              steps: int, warmup: int, threads: int | None = None, compile_model: bool = False,
              device: str = "cpu", bfloat16: bool = False) -> dict[str, float]:
  """Times open_clip's train step on random inputs; returns step_s, images_per_s, etc.

  device "cuda" runs it on the GPU (TF32 matrix products allowed, as JAX's default precision
  does); bfloat16 autocasts as open_clip's `--precision amp_bf16`.
  """
  import open_clip  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  if threads:
    torch.set_num_threads(threads)
  torch.manual_seed(0)
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  model = open_clip.create_model(model_name, pretrained=None, device=device, precision="fp32",
                                 force_patch_dropout=mask_ratio, force_context_length=text_len,
                                 force_image_size=image_size)
  model.train()
  loss_fn = open_clip.ClipLoss()
  optimizer = _optimizer(model, torch)
  step_model = torch.compile(model) if compile_model else model
  vocab = model.vocab_size
  images = torch.randn(batch, 3, image_size, image_size, device=device)
  texts = torch.randint(1, vocab - 1, (batch, text_len), device=device)
  texts[:, -1] = vocab - 1  # the end-of-text token (open_clip pools at the argmax id)

  def step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bfloat16):
      image_features, text_features, logit_scale = step_model(images, texts)
      loss = loss_fn(image_features, text_features, logit_scale)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
      model.logit_scale.clamp_(0, math.log(100))
    return loss.detach()

  def sync(loss):
    float(loss)  # waits for the step (and, on a GPU, for its kernels)

  t0 = time.perf_counter()
  loss = step()  # the first step (torch.compile compiles here)
  sync(loss)
  first_s = time.perf_counter() - t0
  for _ in range(warmup):
    loss = step()
  sync(loss)
  t0 = time.perf_counter()
  for _ in range(steps):
    loss = step()
  sync(loss)
  step_s = (time.perf_counter() - t0) / steps
  num_params = sum(p.numel() for p in model.parameters())
  return {"mask_ratio": mask_ratio, "batch": batch, "step_s": step_s,
          "images_per_s": batch / step_s, "first_step_s": first_s, "params": num_params,
          "threads": torch.get_num_threads(), "torch": torch.__version__,
          "open_clip": open_clip.__version__, "compiled": compile_model, "device": device,
          "bfloat16": bfloat16}


def clip_shape(model_name: str, image_size: int, text_len: int) -> flops.ClipShape:
  """The open_clip model's shape for the analytic FLOPs count: a class token, and every patch is
  embedded before patch dropout."""
  import open_clip  # pylint: disable=g-import-not-at-top
  cfg = open_clip.get_model_config(model_name)
  if cfg is None:
    raise errors.ConfigError(f"open_clip does not know the model {model_name!r}; "
                     f"open_clip.list_models() lists those it knows.")
  vision, text = cfg["vision_cfg"], cfg["text_cfg"]
  return flops.ClipShape(
      image_size=image_size, patch_size=vision["patch_size"], image_width=vision["width"],
      image_depth=vision["layers"], image_mlp_dim=int(vision["width"] * vision.get("mlp_ratio", 4)),
      text_len=text_len, text_width=text["width"], text_depth=text["layers"],
      text_mlp_dim=int(text["width"] * text.get("mlp_ratio", 4)), embed_dim=cfg["embed_dim"],
      class_token=True, embed_after_masking=False)
