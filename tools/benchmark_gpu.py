"""The GPU benchmark: ViT-B/16 and ViT-L/16 FLIP against open_clip, one command, a few minutes.

  python tools/benchmark_gpu.py [--json=/tmp/flip_gpu_benchmark.json] [--models=B/16,L/16]

For each model size it runs, in processes of their own (JAX and torch then do not share the GPU's
memory), one after the other:
- ours: tools/benchmark.py on the paper recipe (configs/vitb16_mask50.py, vitl16_mask50.py) with
  bfloat16 compute, `attention=auto` (cuDNN's fused attention for the image tower on NVIDIA
  GPUs), scanned towers, no remat, one device, and the largest per-device batch that fits
  (`--batch=auto`); the train step itself (model, loss, AdamW, donation) on a synthetic batch;
- open_clip: tools/open_clip_peer.py, its own ViT-B-16 / ViT-L-16 (the same tower shapes; a
  class token) with `patch_dropout` = the mask ratio, `amp_bf16` autocast, its fused SDPA
  attention, `torch.compile`, ClipLoss and AdamW, at the same batch (halved if it does not fit).
It prints and writes (JSON) images/s, MFU against the GPU's datasheet peak and ours / open_clip
per mask ratio, and checks the goals: ours >= 1.3x open_clip's images/s at every mask ratio, and
MFU >= 45% for L/16 at mask 0. Results are written after each model, so a run cut short keeps
what it measured. On a CPU it runs too (a smoke test: --recipe_arg=local with --batch=8, or with
--memory_gib for --batch=auto); with a --recipe_arg, open_clip's model gets the tower sizes of
that shrunk recipe (open_clip_peer.py --sizes) and no goal is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import flags

from flip import cli
from flip import errors
from flip import machine

MODELS = {"B/16": ("vitb16_mask50", "ViT-B-16"), "L/16": ("vitl16_mask50", "ViT-L-16")}
GOAL_RATIO = 1.3  # ours / open_clip images/s, at every mask ratio
GOAL_MFU = 0.45  # L/16 at mask 0, against the datasheet peak
TOOLS = os.path.dirname(os.path.abspath(__file__))

_MODELS = flags.DEFINE_list("models", ["B/16", "L/16"], f"Model sizes, of {sorted(MODELS)}.")
_MASKS = flags.DEFINE_list("mask", ["0", "0.5", "0.75"], "Mask ratios.")
_BATCH = flags.DEFINE_string("batch", "auto", "Global batch: a number or 'auto' (the largest "
                             "that fits one device, tools/benchmark.py --batch=auto).")
_MEMORY = flags.DEFINE_float("memory_gib", None, "Memory per device for --batch=auto where XLA "
                             "reports no limit (a CPU: the smoke test).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per mask ratio.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compiling.", lower_bound=0)
_PEER = flags.DEFINE_enum("peer", "open_clip", ["open_clip", "none"], "Compare with it.")
_PEER_COMPILE = flags.DEFINE_bool("peer_compile", True, "torch.compile open_clip (on a GPU).")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"],
                           "Compute dtype of both sides (ours: config.model.dtype; open_clip: "
                           "amp_bf16 autocast or float32). float32 makes the CPU smoke test fast "
                           "on CPUs without bfloat16 instructions.")
_RECIPE_ARG = flags.DEFINE_string("recipe_arg", None, "The recipes' :arg (local: a CPU smoke "
                                  "test of this tool with tiny towers).")
_JSON = flags.DEFINE_string("json", "/tmp/flip_gpu_benchmark.json", "Results (JSON).")


def _run(argv: list[str], json_path: str, timeout: float) -> dict:
  """Runs one benchmark process; its JSON, or {"error": the end of its output}."""
  start = time.time()
  try:
    result = subprocess.run([sys.executable, *argv, f"--json={json_path}"], capture_output=True,
                            text=True, timeout=timeout)
    output, failed = result.stdout + result.stderr, result.returncode != 0
  except subprocess.TimeoutExpired as e:
    output, failed = f"timed out after {timeout:.0f} s: {e.stdout or ''}{e.stderr or ''}", True
  print(output if failed else result.stdout, flush=True)
  if failed or not os.path.exists(json_path):
    return {"error": output[-4000:], "wall_s": time.time() - start}
  with open(json_path) as f:
    return dict(json.load(f), wall_s=time.time() - start)


def ours_argv(recipe: str, batch: str) -> list[str]:
  return [os.path.join(TOOLS, "benchmark.py"), f"--config={recipe}", f"--batch={batch}",
          f"--mask={','.join(_MASKS.value)}", f"--steps={_STEPS.value}",
          f"--warmup={_WARMUP.value}", f"--config.model.dtype={_DTYPE.value}",
          "--config.model.attention=auto", "--config.model.scan_layers=True",
          "--config.model.image.remat=none", "--config.model.text.remat=none",
          "--config.mesh.data=-1", "--config.mesh.fsdp=1", "--config.mesh.model=1",
          *([f"--memory_gib={_MEMORY.value}"] if _MEMORY.value else [])]


def peer_argv(model: str, ours: dict, sizes: str | None = None) -> list[str]:
  gpu = ours["backend"] == "gpu"
  return [os.path.join(TOOLS, "open_clip_peer.py"), f"--model={model}",
          *([f"--sizes={sizes}"] if sizes else []),
          f"--batch={ours['batch']}", f"--mask={','.join(_MASKS.value)}",
          f"--image_size={ours['image_size']}", f"--text_len={ours['text_len']}",
          f"--steps={_STEPS.value}", f"--warmup={_WARMUP.value}",
          f"--device={'cuda' if gpu else 'cpu'}", f"--bfloat16={_DTYPE.value == 'bfloat16'}",
          f"--compile={_PEER_COMPILE.value and gpu}"]


def summarize(size: str, ours: dict, peer: dict | None) -> list[dict]:
  """One row per mask ratio: images/s and MFU (datasheet, else the measured peak) of both, and
  ours / open_clip."""
  rows = []
  peer_rows = {r["mask_ratio"]: r for r in (peer or {}).get("rows", [])}
  for r in ours["rows"]:
    p = peer_rows.get(r["mask_ratio"])
    mfu = r["mfu_datasheet"] if r.get("mfu_datasheet") is not None else r["mfu"]
    rows.append({
        "model": size, "mask_ratio": r["mask_ratio"], "batch": r["batch"],
        "images_per_s": r["images_per_s"], "mfu": mfu,
        "mfu_basis": "datasheet" if r.get("mfu_datasheet") is not None else "measured",
        "peer_batch": p["batch"] if p else None,
        "peer_images_per_s": p["images_per_s"] if p else None,
        "peer_mfu": p.get("mfu_datasheet") if p else None,
        "over_peer": r["images_per_s"] / p["images_per_s"] if p else None})
  return rows


def goals(rows: list[dict]) -> dict:
  """The issue's goals, each True / False, or None where not measured."""
  ratios = [r["over_peer"] for r in rows if r["over_peer"] is not None]
  large = [r for r in rows if r["model"] == "L/16" and r["mask_ratio"] == 0
           and r["mfu_basis"] == "datasheet"]
  return {f"ours >= {GOAL_RATIO}x open_clip at every mask ratio":
              all(x >= GOAL_RATIO for x in ratios) if ratios else None,
          f"L/16 MFU >= {GOAL_MFU:.0%} at mask 0 (datasheet)":
              large[0]["mfu"] >= GOAL_MFU if large else None}


def markdown(rows: list[dict]) -> str:
  out = ["| model | mask | batch | ours images/s | ours MFU | open_clip images/s | "
         "open_clip MFU | ours / open_clip |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    peer = r["peer_images_per_s"]
    batch = str(r["batch"]) + (f" ({r['peer_batch']})" if r["peer_batch"] not in (None, r["batch"])
                               else "")
    out.append(
        f"| {r['model']} | {r['mask_ratio']:.0%} | {batch} | {r['images_per_s']:,.0f} | "
        f"{100 * r['mfu']:.1f}%{'' if r['mfu_basis'] == 'datasheet' else ' (measured peak)'} | "
        + (f"{peer:,.0f} | " if peer else "- | ")
        + (f"{100 * r['peer_mfu']:.1f}% | " if r["peer_mfu"] is not None else "- | ")
        + (f"{r['over_peer']:.2f}x |" if r["over_peer"] is not None else "- |"))
  return "\n".join(out)


def main(argv):
  from flip import config_lib  # pylint: disable=g-import-not-at-top  (it imports JAX)
  from flip.formats import open_clip as open_clip_format  # pylint: disable=g-import-not-at-top
  del argv
  unknown = sorted(set(_MODELS.value) - set(MODELS))
  if unknown:
    raise errors.ConfigError(f"--models: unknown {unknown}; choose from {sorted(MODELS)}.")
  start = time.time()
  result = {**machine.describe(), "dtype": _DTYPE.value, "steps": _STEPS.value, "warmup": _WARMUP.value, "models": {},
            "rows": []}
  base = os.path.splitext(_JSON.value)[0]
  os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
  for size in _MODELS.value:
    recipe_name, peer_model = MODELS[size]
    recipe = config_lib.recipe_path(recipe_name) + (f":{_RECIPE_ARG.value}"
                                                    if _RECIPE_ARG.value else "")
    print(f"== {size}: ours ({recipe_name}, {_DTYPE.value}, batch {_BATCH.value})", flush=True)
    ours = _run(ours_argv(recipe, _BATCH.value), f"{base}.{size.replace('/', '')}.ours.json",
                timeout=600)
    peer = None
    if "error" not in ours and _PEER.value == "open_clip":
      sizes = None
      if _RECIPE_ARG.value:  # open_clip's model with the shrunk recipe's tower sizes
        sizes = f"{base}.{size.replace('/', '')}.peer_sizes.json"
        with open(sizes, "w") as f:
          json.dump(open_clip_format.tower_sizes(config_lib.resolve(
              config_lib.load_recipe(recipe_name, _RECIPE_ARG.value))), f)
      print(f"== {size}: open_clip {peer_model}{' resized' if sizes else ''} at batch "
            f"{ours['batch']}", flush=True)
      peer = _run(peer_argv(peer_model, ours, sizes),
                  f"{base}.{size.replace('/', '')}.peer.json", timeout=600)
    result["models"][size] = {"ours": ours, "peer": peer}
    if "error" not in ours:
      result["rows"] += summarize(size, ours, peer if peer and "error" not in peer else None)
    # Shrunk recipes (:local) are not the towers the goals are set for: nothing to check.
    result["goals"] = goals(result["rows"]) if not _RECIPE_ARG.value else {}
    result["wall_s"] = time.time() - start
    with open(_JSON.value, "w") as f:  # after each model: a run cut short keeps its results
      json.dump(result, f, indent=2)
  device = next((m["ours"].get("device") for m in result["models"].values()
                 if "error" not in m["ours"]), "?")
  print(f"\n{device} (CPU {result['cpu_model']}), {_DTYPE.value}, "
        f"{result['wall_s'] / 60:.1f} min in all:\n{markdown(result['rows'])}")
  if _RECIPE_ARG.value:
    print(f"(--recipe_arg={_RECIPE_ARG.value}: both sides have the shrunk recipe's tower sizes; "
          "no goal is checked)")
  for goal, met in result["goals"].items():
    print(f"goal {goal}: {'met' if met else 'not met' if met is not None else 'not measured'}")
  failed = [size for size, m in result["models"].items()
            if "error" in m["ours"] or (m["peer"] or {}).get("error")]
  if failed:
    raise errors.FlipError(f"the benchmark of {failed} failed (their output is above and in "
                           f"{_JSON.value}).")


if __name__ == "__main__":
  cli.run(main, tensorflow=False, join=False)
