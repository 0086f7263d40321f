"""Times the real train step of a recipe at several mask ratios, in one process.

  python tools/benchmark.py --config=configs/demo.py --mask=0,0.5,0.75 [--batch=N] [--steps=10]

For each mask ratio it compiles the jitted train step of flip.train_step (same model, optimizer,
sharding and donation as training), runs warm-up steps, then times `--steps` steps on a
synthetic batch (no input pipeline) and prints step time, images/s, XLA's FLOPs per step and the
ratios to the first mask ratio listed. Ratios measured in one run are the figures to compare:
absolute times move with whatever else the machine is doing. `--json=FILE` saves the table.
"""

from __future__ import annotations

import json
import time

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from flip import config_lib
from flip import sharding
from flip import train_step

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file, e.g. configs/demo.py.",
                                          lock_config=False)
_MASKS = flags.DEFINE_list("mask", ["0", "0.5", "0.75"], "Mask ratios to time.")
_BATCH = flags.DEFINE_integer("batch", None, "Global batch size (default: the recipe's).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per mask ratio.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling.")
_JSON = flags.DEFINE_string("json", None, "Write the results to this JSON file.")
flags.mark_flags_as_required(["config"])


def step_flops(config, mask_ratio: float, state, batch) -> float:
  """XLA's FLOPs count of one train step, from the unscanned step (XLA counts a scanned loop's
  body once); traced and lowered only, not compiled."""
  config = config.copy_and_resolve_references()
  config.model.scan_layers = False
  _, _, abstract, step_fn = train_step.build(config, sharding.make_mesh(config.mesh), mask_ratio)
  cost = step_fn.lower(abstract, batch).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def time_step(config, mask_ratio: float, steps: int, warmup: int) -> dict[str, float]:
  """Compiles and times flip.train_step.train_step for one mask ratio on a synthetic batch."""
  mesh = sharding.make_mesh(config.mesh)
  batch_size = config.input.global_batch_size
  sharding.check_batch(batch_size, mesh)
  _, init_fn, _, step_fn = train_step.build(config, mesh, mask_ratio)

  rng = np.random.default_rng(0)
  size, text_len = config.input.image_size, config.input.text_len
  batch = sharding.global_batch({
      "image": rng.standard_normal((batch_size, size, size, 3), np.float32),
      "text": rng.integers(1, config.model.text.vocab_size, (batch_size, text_len), np.int32),
  }, mesh)
  state = init_fn(jax.random.key(0))

  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  flops = step_flops(config, mask_ratio, state, batch)

  for _ in range(warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - t0) / steps
  return {"mask_ratio": mask_ratio, "batch": batch_size, "step_s": step_s,
          "images_per_s": batch_size / step_s, "flops_per_step": flops, "compile_s": compile_s}


def main(argv):
  del argv
  config = _CONFIG.value
  if _BATCH.value:
    config.input.global_batch_size = _BATCH.value
  if not config.input.data:  # the paper recipes name none; the benchmark reads no data
    config.input.data = "tfds:synthetic"
  config_lib.validate(config)
  masks = [float(m) for m in _MASKS.value]
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; "
        f"batch {config.input.global_batch_size}; image {config.input.image_size}px / patch "
        f"{config.model.image.patch_size}; {_STEPS.value} timed steps per mask ratio")
  rows = [time_step(config, m, _STEPS.value, _WARMUP.value) for m in masks]
  base = rows[0]
  print(f"{'mask':>6} {'step ms':>9} {'img/s':>9} {'GFLOPs/step':>12} {'speedup':>8} "
        f"{'FLOPs ratio':>11}")
  for r in rows:
    r["speedup"] = base["step_s"] / r["step_s"]
    r["flops_ratio"] = r["flops_per_step"] / base["flops_per_step"]
    print(f"{r['mask_ratio']:>6.2f} {1e3 * r['step_s']:>9.1f} {r['images_per_s']:>9.1f} "
          f"{r['flops_per_step'] / 1e9:>12.2f} {r['speedup']:>7.2f}x {r['flops_ratio']:>10.2f}x")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"device": jax.devices()[0].device_kind, "device_count": jax.device_count(),
                 "rows": rows}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
