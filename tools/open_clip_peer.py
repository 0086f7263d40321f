"""open_clip's training step, timed the way tools/benchmark.py times ours (the `--peer open_clip`).

What is timed is what open_clip's own training loop (open_clip_train.train.train_one_epoch) does
per step at float32: `model(images, texts)`, `ClipLoss`, `loss.backward()`, `AdamW.step()` with
open_clip's parameter groups (no weight decay on gains, biases, embeddings and the temperature),
`zero_grad` and the clamp of the logit scale. The model is open_clip's own `ViT-B-16` (or any
model name it knows) with `patch_dropout` = the mask ratio and the text context set to our text
length, so both sides do the same work per image; no pretrained weights are read.

Needs `pip install -r requirements-peer.txt` (torch, torchvision, open-clip-torch).

--sizes=FILE.json sets tower sizes (embed_dim and vision_cfg / text_cfg entries such as layers,
width, heads) on the named model's config: open_clip's model of another shape, registered as
MODEL-resized (tools/benchmark_gpu.py --recipe_arg=local: the shrunk recipe's towers).

On its own (tools/benchmark_gpu.py runs it so, in a process of its own beside ours: JAX and
torch then do not share the GPU's memory):

  python tools/open_clip_peer.py --model=ViT-L-16 --batch=512 --device=cuda --bfloat16 \
      --compile [--mask=0,0.5,0.75] [--steps=10] [--warmup=3] [--json=FILE]

A batch that runs out of device memory is halved until it fits (the row says so); MFU is
against the datasheet peak of the GPU (flip/flops.py).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import tempfile
import time

from flip import errors


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


def clip_shape(model_name: str, image_size: int, text_len: int):
  """The open_clip model's shape for the analytic FLOPs count (flip.flops.ClipShape): a class
  token, and every patch is embedded before patch dropout."""
  import open_clip  # pylint: disable=g-import-not-at-top
  from flip import flops  # pylint: disable=g-import-not-at-top
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


def read_sizes(path: str) -> dict:
  """The tower sizes in the JSON file `path` (--sizes)."""
  try:
    with open(path) as f:
      sizes = json.load(f)
  except FileNotFoundError:
    raise errors.NotFoundError(f"--sizes: {path} not found.") from None
  except json.JSONDecodeError as e:
    raise errors.DataError(f"--sizes: {path} is not JSON: {e}.") from None
  unknown = sorted(set(sizes) - {"embed_dim", "vision_cfg", "text_cfg"})
  if unknown:
    raise errors.ConfigError(f"--sizes: unknown field(s) {unknown}; it sets embed_dim, "
                             "vision_cfg and text_cfg entries.")
  return sizes


def resized(model_name: str, sizes: dict, directory: str) -> str:
  """Registers open_clip's config of `model_name` with `sizes` (embed_dim, vision_cfg and
  text_cfg entries; flip.formats.open_clip.tower_sizes) as `<model_name>-resized` (a model
  config file written to `directory`); returns that name."""
  import open_clip  # pylint: disable=g-import-not-at-top
  cfg = open_clip.get_model_config(model_name)
  if cfg is None:
    raise errors.ConfigError(f"open_clip does not know the model {model_name!r}; "
                             "open_clip.list_models() lists those it knows.")
  cfg = dict(cfg, **{k: dict(cfg[k], **v) if isinstance(cfg.get(k), dict) else v
                     for k, v in sizes.items()})
  name = f"{model_name}-resized"
  path = os.path.join(directory, f"{name}.json")
  with open(path, "w") as f:
    json.dump(cfg, f)
  open_clip.add_model_config(path)
  return name


def _out_of_memory(e: BaseException) -> bool:
  return type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()


def time_step_fitting(model_name: str, batch: int, mask_ratio: float, **kwargs) -> dict:
  """time_step at `batch`, halved until a step fits the device's memory; the row's "batch" is
  the one timed and "out_of_memory_at" lists the batches that did not fit."""
  too_big = []
  while True:
    try:
      row = time_step(model_name, batch, mask_ratio, **kwargs)
      row["out_of_memory_at"] = too_big
      return row
    except (RuntimeError, MemoryError) as e:
      if not _out_of_memory(e) or batch <= 1:
        raise
      import torch  # pylint: disable=g-import-not-at-top
      too_big.append(batch)
      batch //= 2
      if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from flip import flops  # pylint: disable=g-import-not-at-top
  del argv
  from absl import logging  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  require()
  logging.set_verbosity(logging.WARNING)  # open_clip logs each model creation at INFO
  import torch  # pylint: disable=g-import-not-at-top
  device_name = torch.cuda.get_device_name() if f.device == "cuda" else "cpu"
  dtype = "bfloat16" if f.bfloat16 else "float32"
  datasheet = flops.datasheet_peak(device_name, dtype)
  with tempfile.TemporaryDirectory() as directory:
    model = resized(f.model, read_sizes(f.sizes), directory) if f.sizes else f.model
    shape = clip_shape(model, f.image_size, f.text_len)
    rows = [_row(model, mask, shape, datasheet) for mask in (float(m) for m in f.mask)]
  result = {"name": "open_clip", "model": model, "device": device_name, "dtype": dtype,
            "datasheet_peak": datasheet, "rows": rows}
  if f.json:
    with open(f.json, "w") as out:
      json.dump(result, out, indent=2)


def _row(model: str, mask: float, shape, datasheet: float | None) -> dict:
  """One timed mask ratio of main(), printed."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from flip import flops  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  row = time_step_fitting(model, f.batch, mask, image_size=f.image_size, text_len=f.text_len,
                          steps=f.steps, warmup=f.warmup, compile_model=f.compile,
                          device=f.device, bfloat16=f.bfloat16)
  model_flops = flops.step_flops(shape, mask, row["batch"])
  row.update(model_flops_per_step=model_flops, flops_per_s=model_flops / row["step_s"],
             mfu_datasheet=model_flops / row["step_s"] / datasheet if datasheet else None)
  print(f"open_clip {model} mask {mask:.2f}: batch {row['batch']}, "
        f"{1e3 * row['step_s']:.1f} ms/step, {row['images_per_s']:.1f} images/s"
        + (f", MFU {100 * row['mfu_datasheet']:.1f}%" if datasheet else "")
        + (f" (out of memory at {row['out_of_memory_at']})" if row["out_of_memory_at"] else ""),
        flush=True)
  return row


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("model", "ViT-B-16", "open_clip model name.")
  flags.DEFINE_integer("batch", 32, "Batch size (halved while it runs out of memory).",
                       lower_bound=1)
  flags.DEFINE_list("mask", ["0", "0.5", "0.75"], "Mask ratios (patch_dropout) to time.")
  flags.DEFINE_integer("image_size", 224, "Image size.")
  flags.DEFINE_integer("text_len", 32, "Text context length.")
  flags.DEFINE_integer("steps", 10, "Timed steps per mask ratio.", lower_bound=1)
  flags.DEFINE_integer("warmup", 3, "Untimed steps after the first.", lower_bound=0)
  flags.DEFINE_enum("device", "cpu", ["cpu", "cuda"], "torch device.")
  flags.DEFINE_bool("bfloat16", False, "Autocast to bfloat16 (open_clip's --precision amp_bf16).")
  flags.DEFINE_bool("compile", False, "torch.compile the model.")
  flags.DEFINE_string("sizes", None, "A JSON file of tower sizes to set on --model's config "
                      "(embed_dim, vision_cfg and text_cfg entries).")
  flags.DEFINE_string("json", None, "Write the results to this JSON file.")


if __name__ == "__main__":
  from flip import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run(main, tensorflow=False, join=False)
