"""Plans a recipe's memory on a target slice: compiles its train step for the target mesh on
simulated CPU devices (nothing is allocated) and prints the per-device bytes of parameters,
optimizer state and XLA temporaries for each rematerialisation policy.

  python tools/plan_memory.py --config=configs/vitl16_mask50.py --target=v4-256 --mesh=fsdp=-1
  python tools/plan_memory.py --config=configs/vitb16_mask50.py --devices=8 --hbm_gib=80 \
      --mesh=data=-1 --remat=none,full --batch=4096

`--target` names a slice (devices and memory per device, below) or use --devices/--hbm_gib.
The figures come from XLA's CPU compiler, whose fusion and scheduling differ from the TPU and
GPU compilers: treat them as estimates (activations usually within tens of percent) and keep
headroom; parameter and optimizer bytes are exact.
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from flip import cli

# name: (JAX devices, memory per device in GiB). TPU v4/v5p slices are named by TensorCores
# (2 per chip, one JAX device per chip); v3 exposes each core as a device, v5e has one per chip.
TARGETS = {
    "v3-256": (256, 16), "v3-512": (512, 16),
    "v4-128": (64, 32), "v4-256": (128, 32), "v4-512": (256, 32),
    "v5e-256": (256, 16),
    "v5p-256": (128, 95),
    "8xA100-40G": (8, 40), "8xA100-80G": (8, 80), "8xH100": (8, 80),
}

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file.", lock_config=False)
_TARGET = flags.DEFINE_enum("target", None, list(TARGETS), "Slice to plan for.")
_DEVICES = flags.DEFINE_integer("devices", None, "Number of devices (instead of --target).")
_HBM = flags.DEFINE_float("hbm_gib", None, "Memory per device in GiB (instead of --target).")
_MESH = flags.DEFINE_string("mesh", None, "Mesh sizes, e.g. 'fsdp=-1' or 'data=16,fsdp=8' "
                            "(default: the recipe's config.mesh).")
_REMAT = flags.DEFINE_list("remat", ["none", "dots", "full"],
                           "Policies to compile: POLICY for both towers or IMAGE/TEXT, e.g. "
                           "full/none (none, dots, full).")
_BATCH = flags.DEFINE_integer("batch", None, "Global batch size (default: the recipe's).")
_JSON = flags.DEFINE_string("json", None, "Also write the table to this JSON file.")
flags.mark_flags_as_required(["config"])


def parse_mesh(text: str) -> dict[str, int]:
  sizes = {}
  for item in text.split(","):
    key, sep, value = item.partition("=")
    if not sep or not value.strip().lstrip("-").isdigit():
      raise app.UsageError(f"--mesh={text!r}: use comma-separated axis=size, e.g. fsdp=-1.")
    sizes[key.strip()] = int(value)
  return sizes


def target() -> tuple[int, float | None]:
  if _TARGET.value:
    if _DEVICES.value or _HBM.value:
      raise app.UsageError("Give either --target or --devices/--hbm_gib, not both.")
    return TARGETS[_TARGET.value]
  if not _DEVICES.value:
    raise app.UsageError(f"Give --target (one of {', '.join(TARGETS)}) or --devices.")
  return _DEVICES.value, _HBM.value


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  devices, hbm_gib = target()
  # Simulated devices on the host CPU; set before JAX starts its backend.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={devices}").strip()
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")
  from flip import config_lib, memory, sharding, train_step  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  if _MESH.value:
    config.mesh = dict(data=1, fsdp=1, model=1) | parse_mesh(_MESH.value)
  if _BATCH.value:
    config.input.global_batch_size = _BATCH.value
  if not config.input.data:  # the paper recipes name none; planning reads no data
    config.input.data = "tfds:unused"
  config = config_lib.resolve(config)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch(config.input.global_batch_size, mesh)
  print(f"{config.model.image.patch_size}px-patch ViT width {config.model.image.width} x "
        f"{config.model.image.depth}, text {config.model.text.width} x {config.model.text.depth}; "
        f"mask {config.mask_ratio}; global batch {config.input.global_batch_size} "
        f"({config.input.global_batch_size // sharding.batch_ways(mesh)} per batch shard); "
        f"{config.model.dtype}; mesh {dict(mesh.shape)} on {devices} devices"
        + (f" with {hbm_gib:g} GiB each" if hbm_gib else ""))
  print(f"{'remat':>9} {'params':>8} {'opt state':>10} {'temps':>8} {'peak':>8}  (GiB per device)"
        + ("  fits" if hbm_gib else ""))
  rows = []
  for policy in _REMAT.value:
    image, _, text = policy.partition("/")
    config.model.image.remat, config.model.text.remat = image, text or image
    config_lib.validate(config)
    _, _, abstract, step_fn = train_step.build(config, mesh)
    compiled = step_fn.lower(abstract, *train_step.abstract_inputs(config, mesh)).compile()
    r = memory.report(compiled, abstract)
    row = {"remat": policy, **r.as_dict()}
    gib = {k: v / memory.GIB for k, v in row.items() if k != "remat"}
    fits = ""
    if hbm_gib:
      row["fits"] = r.peak <= hbm_gib * memory.GIB
      fits = f"  {'yes' if row['fits'] else 'no'} ({100 * gib['peak'] / hbm_gib:.0f}%)"
    print(f"{policy:>9} {gib['params']:>8.2f} {gib['opt_state']:>10.2f} "
          f"{gib['temporaries']:>8.2f} {gib['peak']:>8.2f}{fits}", flush=True)
    rows.append(row)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"devices": devices, "hbm_gib": hbm_gib, "mesh": dict(mesh.shape),
                 "global_batch_size": config.input.global_batch_size, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  cli.run(main, tensorflow=False, join=False)  # JAX's devices are set up in main
