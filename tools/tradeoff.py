"""FLIP's speed/accuracy trade-off in miniature (the paper's Figure 1 and Table 1) on this machine.

  python tools/tradeoff.py --budget_s=300 --out=docs/tradeoff        # ~20 min on 2 CPU cores

Trains the demo model (or --config) from scratch at each mask ratio for the same wall-clock
budget of training (evaluation excluded), evaluating zero-shot accuracy along the way; then
evaluates each masked model on masked images (masked inference) and tunes it unmasked for
--tune_fraction of the budget (the second stage, configs/demo_unmasked_tuning.py's settings).
Each run's length in steps comes from its measured throughput (a short calibration run per mask
ratio), so that its learning-rate schedule ends with the budget. Writes OUT.json, OUT.md (the
table) and OUT.png (accuracy vs. training wall-clock).
"""

from __future__ import annotations

import glob
import json
import os

from absl import app
from absl import flags

from flip import hostmem

hostmem.reexec_with_huge_pages()  # first: the restart (flip/hostmem.py) before JAX and TF load

from ml_collections import config_flags
import numpy as np

from flip import cli
from flip import config_lib

_CONFIG = config_flags.DEFINE_config_file("config", config_lib.recipe_path("demo"),
                                          "Recipe to pretrain.", lock_config=False)
_TUNE = config_flags.DEFINE_config_file(
    "tune", config_lib.recipe_path("demo_unmasked_tuning"),
    "Unmasked tuning recipe (its learning rate and warmup are used).", lock_config=False)
_MASKS = flags.DEFINE_list("masks", ["0", "0.5", "0.75"], "Mask ratios to compare.")
_BUDGET = flags.DEFINE_float("budget_s", 300.0, "Training wall-clock per mask ratio, seconds.")
_TUNE_FRACTION = flags.DEFINE_float("tune_fraction", 0.15,
                                    "Unmasked tuning budget, as a fraction of --budget_s.")
_EVALS = flags.DEFINE_integer("evals", 8, "Zero-shot evaluations along each pretraining run.")
_CALIB = flags.DEFINE_integer("calib_steps", 60, "Steps of each throughput calibration run.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/flip_tradeoff", "Runs go here (replaced).")
_OUT = flags.DEFINE_string("out", "/tmp/flip_tradeoff/tradeoff", "OUT.json, OUT.md, OUT.png.")
_EVAL = flags.DEFINE_string("eval", "zeroshot", "The config.evals entry to track.")


def scalars(workdir: str) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} from a run's TensorBoard event files."""
  import tensorflow as tf
  out: dict[str, dict[int, float]] = {}
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.HasField("tensor"):
          array = tf.make_ndarray(value.tensor)
          if array.ndim == 0 and array.dtype.kind in "fiu":  # scalars (not hparams or text)
            out.setdefault(value.tag, {})[event.step] = float(array)
        elif value.HasField("simple_value"):
          out.setdefault(value.tag, {})[event.step] = value.simple_value
  return out


def run(config, workdir: str) -> dict[str, float]:
  import tensorflow as tf
  from flip import train
  if tf.io.gfile.exists(workdir):
    tf.io.gfile.rmtree(workdir)
  return train.train_and_evaluate(config, workdir)


def configure(config, mask: float, steps: int, evals: int | None, eval_name: str):
  """config at `mask` for `steps` steps, evaluating `eval_name` `evals` times (None: never) and
  logging at the same steps, so each evaluation has its training time; the warmup keeps the
  recipe's fraction of the run."""
  c = config.copy_and_resolve_references()
  base_total, base_warmup = c.total_steps, c.optim.warmup_steps
  c.mask_ratio = mask
  c.total_steps = steps
  c.optim.warmup_steps = max(1, round(steps * base_warmup / base_total)) if base_warmup else None
  every = max(1, steps // evals) if evals else steps
  c.log_every_steps = every
  c.checkpoint_every_steps = steps
  c.evals = ({} if evals is None else
             {eval_name: dict(config.evals[eval_name].to_dict(), every_steps=every)})
  return c


def calibrate(config, mask: float, steps: int, workdir: str) -> float:
  """Training steps per second at `mask` (the second half of a short run: past the start-up)."""
  c = configure(config, mask, steps, None, "")
  c.log_every_steps = steps // 2
  return run(c, workdir)["train/steps_per_sec"]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  from flip import evaluation
  masks = [float(m) for m in _MASKS.value]
  base, tune_base, name = _CONFIG.value, _TUNE.value, _EVAL.value
  if name not in base.evals:
    raise app.UsageError(f"--eval={name}: the recipe has no config.evals.{name}.")
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)

  rates = {mask: calibrate(base, mask, _CALIB.value,
                           os.path.join(_WORKDIR.value, f"calib_{mask:g}"))
           for mask in sorted(set(masks) | {0.0})}  # unmasked: also the tuning's speed
  results = []
  for mask in masks:
    rate = rates[mask]
    steps = max(2, int(_BUDGET.value * rate))
    print(f"mask {mask:g}: {rate:.2f} steps/s -> {steps} steps in {_BUDGET.value:g} s", flush=True)
    workdir = os.path.join(_WORKDIR.value, f"mask_{mask:g}")
    config = configure(base, mask, steps, _EVALS.value, name)
    run(config, workdir)
    logged = scalars(workdir)
    curve = [(logged["train/seconds"][s], logged[f"{name}/acc1"][s])
             for s in sorted(logged[f"{name}/acc1"])]
    row = {"mask_ratio": mask, "steps_per_s": rate, "steps": steps,
           "images": steps * base.input.global_batch_size,
           "train_s": curve[-1][0], "top1": curve[-1][1], "curve": curve}
    if mask > 0:
      masked = configure(base, mask, steps, 1, name)
      masked.evals = {f"{name}_masked": dict(masked.evals[name].to_dict(), mask_ratio=mask)}
      row["masked_inference_top1"] = evaluation.evaluate_checkpoint(masked, workdir)[
          f"{name}_masked/acc1"]
      tune_steps = max(2, int(_TUNE_FRACTION.value * _BUDGET.value * rates[0.0]))
      tune = configure(tune_base, 0.0, tune_steps, 1, name)
      tune.init_from = workdir
      tune_dir = workdir + "_tuned"
      summary = run(tune, tune_dir)
      row.update(tuned_top1=summary[f"{name}/acc1"], tune_steps=tune_steps,
                 tune_s=summary["train/seconds"])
    results.append(row)
    print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)

  with open(_OUT.value + ".json", "w") as f:
    json.dump({"budget_s": _BUDGET.value, "eval": name, "image_size": base.input.image_size,
               "patch_size": base.model.image.patch_size, "rows": results}, f, indent=2)
  with open(_OUT.value + ".md", "w") as f:
    f.write(markdown(results, name))
  size, patch = base.input.image_size, base.model.image.patch_size
  plot(results, _OUT.value + ".png", name,
       f"{(size // patch) ** 2} patches of {patch} px per {size} px image, "
       f"batch {base.input.global_batch_size}")
  print(markdown(results, name))


def markdown(results, name: str) -> str:
  """The table; `at T s` compares the runs at the same training time T, the shortest run's length
  (each run's length is its calibrated step count, which the measured speed can miss)."""
  common = min(r["train_s"] for r in results)
  lines = [f"| mask | steps/s (calibration) | steps | images seen | trained | {name} top-1 | "
           f"top-1 at {common:.0f} s | masked inference | + unmasked tuning (time) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in results:
    masked = f"{100 * r['masked_inference_top1']:.1f}%" if "masked_inference_top1" in r else "-"
    tuned = (f"{100 * r['tuned_top1']:.1f}% (+{r['tune_s']:.0f} s)" if "tuned_top1" in r
             else "-")
    seconds, acc = zip(*r["curve"])
    lines.append(f"| {100 * r['mask_ratio']:.0f}% | {r['steps_per_s']:.2f} | {r['steps']} | "
                 f"{r['images']:,} | {r['train_s']:.0f} s | {100 * r['top1']:.1f}% | "
                 f"{100 * np.interp(common, seconds, acc):.1f}% | {masked} | {tuned} |")
  return "\n".join(lines) + "\n"


def plot(results, path: str, name: str, subtitle: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  for r in results:
    seconds, acc = zip(*r["curve"])
    line, = ax.plot([s / 60 for s in seconds], [100 * a for a in acc], marker="o", markersize=3,
                    label=f"mask {100 * r['mask_ratio']:.0f}%")
    if "tuned_top1" in r:
      end = seconds[-1] + r["tune_s"]
      ax.plot([seconds[-1] / 60, end / 60], [100 * acc[-1], 100 * r["tuned_top1"]], ls="--",
              color=line.get_color())
      ax.plot([end / 60], [100 * r["tuned_top1"]], marker="*", markersize=9,
              color=line.get_color())
  ax.set_xlabel("training wall-clock (minutes, evaluation excluded)")
  ax.set_ylabel(f"{name} top-1 (%)")
  ax.set_title(f"FLIP in miniature: accuracy vs. training time\n{subtitle}; dashed: unmasked "
               "tuning", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)


if __name__ == "__main__":
  cli.run(main, recipe_flags=("config", "tune"))
