"""Times the real train step of a recipe at several mask ratios, with MFU, in one process.

  python tools/benchmark.py --config=configs/vitb16_mask50.py --batch=32 [--mask=0,0.5,0.75]
      [--peer=open_clip] [--steps=5] [--warmup=1] [--json=FILE]

For each mask ratio it compiles the jitted train step of flip.train_step (same model, optimizer,
sharding and buffer donation as training), runs warm-up steps, then times `--steps` steps on a
synthetic batch (no input pipeline). It prints step time, images/s, the model FLOPs per step
(flip.flops, analytic) cross-checked against XLA's cost analysis of the same step, the achieved
FLOP/s and the MFU: model FLOP/s over the device's peak. The peak is measured in the same run
(the best of a few large matrix products at the model's compute dtype); on GPUs and TPUs whose
datasheet peak is known (flip/flops.py: PEAK_FLOPS) that MFU is printed too. Override any recipe field the usual
way, e.g. --config.model.dtype=bfloat16 or --config.model.scan_layers=False.

`--peer=open_clip` also times open_clip's train step (tools/open_clip_peer.py: its own ViT-B-16,
`patch_dropout` = the mask ratio, ClipLoss, backward, AdamW) at the same batch, image size and
text length in this process, and prints our images/s over open_clip's; `--peer_resized` gives
that model this recipe's tower sizes (depths, widths, heads, patch, vocabulary: a shrunk :local
recipe against an open_clip model of its shape). Needs `pip install -r requirements-peer.txt`.

Ratios measured in one run are the figures to compare: absolute times move with whatever else
the machine is doing.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time

from absl import flags
from absl import logging

from flip import hostmem

hostmem.reexec_with_huge_pages()  # first: the restart (flip/hostmem.py) before JAX and TF load

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from flip import cli
from flip import config_lib
from flip import errors
from flip import flops as flops_lib
from flip import machine
from flip import memory as memory_lib
from flip import optim
from flip import sharding
from flip import train_step
from flip.formats import open_clip as open_clip_format
from flip.models import transformer
import open_clip_peer  # tools/open_clip_peer.py, beside this script

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file, e.g. configs/demo.py.",
                                          lock_config=False)
_MASKS = flags.DEFINE_list("mask", ["0", "0.5", "0.75"], "Mask ratios to time.")
_BATCH = flags.DEFINE_string(
    "batch", None, "Global batch size (default: the recipe's), or 'auto': the largest batch per "
    "device (a multiple of 8) whose train step at mask 0 fits the device memory (XLA's limit on "
    "GPUs and TPUs, else --memory_gib), times the number of devices.")
_MEMORY = flags.DEFINE_float("memory_gib", None, "Memory per device for --batch=auto (default: "
                             "XLA's memory limit of the accelerator).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per mask ratio.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps after compiling.", lower_bound=0)
_JSON = flags.DEFINE_string("json", None, "Write the results to this JSON file.")
_PEER = flags.DEFINE_enum("peer", None, ["open_clip"], "Also time this implementation.")
_PEER_MODEL = flags.DEFINE_string("peer_model", "ViT-B-16", "open_clip model name.")
_PEER_RESIZED = flags.DEFINE_bool("peer_resized", False, "Give --peer_model this recipe's "
                                  "tower sizes (e.g. for a :local recipe).")
_PEER_COMPILE = flags.DEFINE_bool("peer_compile", False, "torch.compile open_clip's model.")
flags.mark_flags_as_required(["config"])

def measured_peak(dtype: str, shapes=None) -> dict:
  """The best FLOP/s of a few large [m, k] x [k, n] products on one device, at `dtype`: 2048^3,
  the ViT-B/16 MLP's two products and 4096^3; on a CPU 2048^3 alone (the others ran no faster
  than it there, on an AMD EPYC, and take seconds each)."""
  if shapes is None:
    shapes = ((2048, 2048, 2048),)
    if jax.default_backend() != "cpu":
      shapes += ((6272, 768, 3072), (6272, 3072, 768), (4096, 4096, 4096))
  best = {"flops_per_s": 0.0, "shape": None}
  for m, k, n in shapes:
    a = jnp.ones((m, k), transformer.DTYPES[dtype])
    b = jnp.ones((k, n), transformer.DTYPES[dtype])
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    reps = max(3, int(4e10 // (2 * m * k * n)) if jax.default_backend() == "cpu" else 50)
    t0 = time.perf_counter()
    for _ in range(reps):
      out = f(a, b)
    out.block_until_ready()
    rate = 2.0 * m * k * n * reps / (time.perf_counter() - t0)
    if rate > best["flops_per_s"]:
      best = {"flops_per_s": rate, "shape": [m, k, n]}
  return best


def auto_batch(config, memory: float | None, probe: int = 32) -> dict:
  """The largest per-device batch whose train step fits `memory` bytes per device (None: XLA's
  limit on the device), from one compile (no run) at `probe` samples per device and mask 0, the
  most memory: the temporaries but one gradient of the parameters grow with the batch, the rest
  (state, gradient, code) does not. That estimate was 7% below the compiled peak at 12x the probe
  on a CPU, so 85% of the memory is filled (memory.fit_batch); the timed compiles report their
  real peak (peak_bytes)."""
  if memory is None:
    stats = jax.devices()[0].memory_stats() or {}
    memory = stats.get("bytes_limit")
    if not memory:
      raise errors.ConfigError("--batch=auto needs the memory per device: this device reports "
                               "no limit (a CPU); give --memory_gib or a --batch number.")
  mesh = sharding.make_mesh(config.mesh)
  probe_config = copy.deepcopy(config)
  probe_config.input.global_batch_size = probe * mesh.size
  _, _, abstract, step_fn = train_step.build(probe_config, mesh, 0.0)
  compiled = step_fn.lower(abstract, *train_step.abstract_inputs(probe_config, mesh)).compile()
  report = memory_lib.report(compiled, abstract)
  if report is None:
    raise errors.ConfigError("--batch=auto: this backend reports no compiled memory; give a "
                             "--batch number.")
  gradient = memory_lib.per_device_bytes(abstract.params)
  per_sample = max(report.temporaries - gradient, 1) / probe
  fixed = report.peak - per_sample * probe
  batch = memory_lib.fit_batch(fixed, per_sample, memory)
  if batch == 0:
    raise errors.ConfigError(
        f"--batch=auto: not even 8 samples per device fit in {memory / memory_lib.GIB:.1f} GiB "
        f"(state and code {fixed / memory_lib.GIB:.1f} GiB); shard the state "
        "(--config.mesh.fsdp) or turn on remat (--config.model.image.remat=full).")
  return {"per_device_batch": batch, "devices": mesh.size, "memory_bytes": memory,
          "probe_batch": probe, "probe_peak_bytes": report.peak, "fixed_bytes": fixed,
          "per_sample_bytes": per_sample}


def time_step(config, mask_ratio: float, steps: int, warmup: int) -> dict[str, float]:
  """Compiles and times flip.train_step.train_step for one mask ratio on a synthetic batch."""
  mesh = sharding.make_mesh(config.mesh)
  batch_size = config.input.global_batch_size
  sharding.check_batch(batch_size, mesh)
  _, init_fn, abstract, step_fn = train_step.build(config, mesh, mask_ratio)

  rng = np.random.default_rng(0)
  size, text_len = config.input.image_size, config.input.text_len
  batch = sharding.global_batch({
      "image": rng.standard_normal((batch_size, size, size, 3), np.float32),
      "text": rng.integers(1, config.model.text.vocab_size, (batch_size, text_len), np.int32),
  }, mesh)
  state = init_fn(jax.random.key(0))

  t0 = time.perf_counter()
  lr_args = optim.schedule_args(config)
  compiled = step_fn.lower(state, batch, lr_args).compile()
  compile_s = time.perf_counter() - t0
  report = memory_lib.report(compiled, abstract)
  for _ in range(warmup):
    state, _ = compiled(state, batch, lr_args)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch, lr_args)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - t0) / steps
  del state, compiled
  return {"mask_ratio": mask_ratio, "batch": batch_size, "step_s": step_s,
          "images_per_s": batch_size / step_s, "compile_s": compile_s,
          "peak_bytes": report.peak if report else None,
          "xla_flops_per_step": flops_lib.xla_step_flops(config, mask_ratio, mesh)}


def add_flops(row: dict, shape: flops_lib.ClipShape, peak: float, datasheet: float | None,
              devices: int) -> dict:
  """Model FLOPs, achieved FLOP/s and MFU (per device: the step runs on `devices`)."""
  model_flops = flops_lib.step_flops(shape, row["mask_ratio"], row["batch"])
  achieved = model_flops / row["step_s"] / devices
  row.update(model_flops_per_step=model_flops, flops_per_s_per_device=achieved,
             mfu=achieved / peak, mfu_datasheet=achieved / datasheet if datasheet else None)
  if "xla_flops_per_step" in row:
    row["xla_over_model_flops"] = row["xla_flops_per_step"] / model_flops
  return row


def add_ratios(rows: list[dict]) -> None:
  base = rows[0]
  for r in rows:
    r["speedup"] = base["step_s"] / r["step_s"]
    r["flops_ratio"] = r["model_flops_per_step"] / base["model_flops_per_step"]


def print_table(title: str, rows: list[dict], datasheet: bool) -> None:
  print(f"\n{title}")
  head = (f"{'mask':>5} {'step ms':>9} {'img/s':>8} {'GFLOP/step':>11} {'XLA/model':>9} "
          f"{'TFLOP/s':>8} {'MFU':>6}" + (f" {'MFU(ds)':>7}" if datasheet else "") +
          f" {'speedup':>8} {'FLOPs':>6}")
  print(head)
  for r in rows:
    xla = r.get("xla_over_model_flops")
    print(f"{r['mask_ratio']:>5.2f} {1e3 * r['step_s']:>9.1f} {r['images_per_s']:>8.1f} "
          f"{r['model_flops_per_step'] / 1e9:>11.1f} "
          f"{(f'{xla:.3f}' if xla is not None else '-'):>9} "
          f"{r['flops_per_s_per_device'] / 1e12:>8.3f} {100 * r['mfu']:>5.1f}%"
          + (f" {100 * r['mfu_datasheet']:>6.1f}%" if datasheet and r['mfu_datasheet'] else "")
          + f" {r['speedup']:>7.2f}x {r['flops_ratio']:>5.2f}x")


def main(argv):
  del argv
  config = _CONFIG.value
  if _BATCH.value and _BATCH.value != "auto":
    try:
      config.input.global_batch_size = int(_BATCH.value)
    except ValueError:
      raise errors.ConfigError(f"--batch={_BATCH.value!r}: give a number or 'auto'.") from None
  if not config.input.data:  # the paper recipes name none; the benchmark reads no data
    config.input.data = "tfds:synthetic"
  config = config_lib.resolve(config)
  fitted = None
  if _BATCH.value == "auto":
    fitted = auto_batch(config, _MEMORY.value * memory_lib.GIB if _MEMORY.value else None)
    config.input.global_batch_size = fitted["per_device_batch"] * fitted["devices"]
    print(f"--batch=auto: {fitted['per_device_batch']} per device fit in "
          f"{fitted['memory_bytes'] / memory_lib.GIB:.1f} GiB (probe at {fitted['probe_batch']}: "
          f"peak {fitted['probe_peak_bytes'] / memory_lib.GIB:.2f} GiB)", flush=True)
  if _PEER.value == "open_clip":
    if jax.device_count() > 1 or jax.default_backend() == "tpu":
      raise errors.ConfigError("--peer=open_clip compares one CPU or one GPU: run it with one "
                               "device (e.g. CUDA_VISIBLE_DEVICES=0).")
    open_clip_peer.require()  # imports torch: after the checks that need none
  masks = [float(m) for m in _MASKS.value]
  device = jax.devices()[0]
  dtype = config.model.dtype
  devices = jax.device_count()
  host = machine.describe()
  print(f"devices: {devices} x {device.device_kind} ({jax.default_backend()}; CPU "
        f"{host['cpu_model']}, {host['cpu_count']} cores); batch "
        f"{config.input.global_batch_size}; image {config.input.image_size}px / patch "
        f"{config.model.image.patch_size}; {dtype}; scan {config.model.scan_layers}; remat "
        f"{config.model.image.remat}/{config.model.text.remat}; {_STEPS.value} timed steps "
        f"per mask ratio; huge pages {hostmem.active()}")

  peak = measured_peak(dtype)
  datasheet = flops_lib.datasheet_peak(device.device_kind, dtype)
  print(f"measured matmul peak: {peak['flops_per_s'] / 1e12:.3f} TFLOP/s per device "
        f"({dtype}, {peak['shape']})" + (f"; datasheet {datasheet / 1e12:.1f} TFLOP/s"
                                         if datasheet else ""), flush=True)
  rows = [time_step(config, m, _STEPS.value, _WARMUP.value) for m in masks]
  peer_rows, peer_model = [], _PEER_MODEL.value
  if _PEER.value == "open_clip":
    logging.set_verbosity(logging.WARNING)  # open_clip logs each model creation at INFO
    with tempfile.TemporaryDirectory() as directory:
      if _PEER_RESIZED.value:
        peer_model = open_clip_peer.resized(peer_model, open_clip_format.tower_sizes(config),
                                            directory)
      peer_rows = [open_clip_peer.time_step(
          peer_model, config.input.global_batch_size, m, config.input.image_size,
          config.input.text_len, _STEPS.value, _WARMUP.value, compile_model=_PEER_COMPILE.value,
          device="cuda" if jax.default_backend() == "gpu" else "cpu",
          bfloat16=dtype == "bfloat16") for m in masks]
      peer_shape = open_clip_peer.clip_shape(peer_model, config.input.image_size,
                                             config.input.text_len)
  # Measured again after the timings; the better of the two is the peak (a shared machine's
  # background load only ever lowers a measurement).
  again = measured_peak(dtype)
  if again["flops_per_s"] > peak["flops_per_s"]:
    peak = again
  print(f"measured matmul peak after the timings: {again['flops_per_s'] / 1e12:.3f} TFLOP/s; "
        f"MFU below is against {peak['flops_per_s'] / 1e12:.3f}")

  shape = flops_lib.ClipShape.from_config(config)
  for r in rows:
    add_flops(r, shape, peak["flops_per_s"], datasheet, devices)
  add_ratios(rows)
  print_table("FLIP (this codebase)", rows, datasheet is not None)
  result = {"device": device.device_kind, "backend": jax.default_backend(), **host,
            "device_count": devices, "dtype": dtype, "huge_pages": hostmem.active(),
            "batch": config.input.global_batch_size, "image_size": config.input.image_size,
            "text_len": config.input.text_len, "attention": config.model.attention,
            "scan_layers": bool(config.model.scan_layers),
            "remat": [config.model.image.remat, config.model.text.remat],
            "measured_peak": peak, "datasheet_peak": datasheet, "auto_batch": fitted,
            "rows": rows}
  if peer_rows:
    for r in peer_rows:
      add_flops(r, peer_shape, peak["flops_per_s"], datasheet, 1)
    add_ratios(peer_rows)
    print_table(f"open_clip {peer_rows[0]['open_clip']} {peer_model} (torch "
                f"{peer_rows[0]['torch']}, {peer_rows[0]['threads']} threads"
                f"{', torch.compile' if _PEER_COMPILE.value else ''})", peer_rows, False)
    for r, p in zip(rows, peer_rows):
      r["over_peer"] = r["images_per_s"] / p["images_per_s"]
    print("\nimages/s, ours / open_clip: " + ", ".join(
        f"mask {r['mask_ratio']:.2f}: {r['over_peer']:.2f}x" for r in rows))
    result["peer"] = {"name": "open_clip", "model": peer_model, "rows": peer_rows}
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  cli.run(main, tensorflow=False)
