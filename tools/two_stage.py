"""Both stages of FLIP in one command: masked pretraining, then unmasked tuning from its final
checkpoint, with the pretrained model also evaluated on masked images (the paper's ablation).

  python tools/two_stage.py --workdir=/tmp/flip_two_stage          # the demo (~11 min on 2 cores)
  python tools/two_stage.py --workdir=gs://BUCKET/l16 \\
      --pretrain=configs/vitl16_mask50.py --tune=configs/vitl16_unmasked_tuning.py \\
      --pretrain.input.data='wds:...' --tune.input.data='wds:...'

Stage 1 trains in WORKDIR/pretrain, stage 2 in WORKDIR/tune with init_from=WORKDIR/pretrain;
rerunning the command resumes whichever stage was interrupted (a finished stage only
re-evaluates). Prints a table of every evaluator's metrics after pretraining (full images),
after pretraining with masked inference (the pretraining mask ratio), and after tuning, and
writes it to WORKDIR/two_stage.json. On several hosts run it on every one (as flip.main).
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags

from flip import hostmem

hostmem.reexec_with_huge_pages()  # first: the restart (flip/hostmem.py) before JAX and TF load

from ml_collections import config_flags

from flip import cli
from flip import config_lib
from flip import distributed

_PRETRAIN = config_flags.DEFINE_config_file(
    "pretrain", config_lib.recipe_path("demo"), "Pretraining recipe (stage 1).")
_TUNE = config_flags.DEFINE_config_file(
    "tune", config_lib.recipe_path("demo_unmasked_tuning"),
    "Unmasked tuning recipe (stage 2); its init_from is set to stage 1's workdir.",
    lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Holds pretrain/, tune/ and two_stage.json.")
flags.mark_flags_as_required(["workdir"])
flags.adopt_module_key_flags(distributed)


def masked_inference_config(config):
  """`config` with every evaluator renamed NAME_masked and run on images with config's mask."""
  config = config.copy_and_resolve_references()
  config.unlock()
  config.evals = {f"{name}_masked": dict(ev.to_dict(), mask_ratio=config.mask_ratio)
                  for name, ev in config.evals.items()}
  return config


def table(columns: dict[str, dict[str, float]]) -> str:
  """Evaluation metrics (rows, in %) of each stage (columns)."""
  metrics = sorted({k for c in columns.values() for k in c
                    if "/" in k and not k.startswith(("train/", "data/"))})
  width = max(len(m) for m in metrics)
  lines = [f"{'':<{width}}" + "".join(f"  {name:>24}" for name in columns)]
  for m in metrics:
    lines.append(f"{m:<{width}}" + "".join(
        f"  {100 * c[m]:>23.1f}%" if m in c else f"  {'-':>24}" for c in columns.values()))
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  from flip import evaluation
  from flip import train
  from etils import epath
  import jax

  pretrain, tune = _PRETRAIN.value, _TUNE.value
  pre_dir, tune_dir = (os.path.join(_WORKDIR.value, d) for d in ("pretrain", "tune"))
  if tune.stage != "tune" or tune.mask_ratio != 0:
    raise app.UsageError("--tune is not an unmasked tuning recipe (config.stage 'tune', "
                         "mask_ratio 0), e.g. configs/vitl16_unmasked_tuning.py.")
  tune.init_from = pre_dir

  print(f"Stage 1: pretraining at mask ratio {pretrain.mask_ratio} in {pre_dir}", flush=True)
  rows = {f"pretrained (mask {pretrain.mask_ratio:g})": train.train_and_evaluate(pretrain,
                                                                                 pre_dir)}
  if pretrain.mask_ratio > 0:
    masked = evaluation.evaluate_checkpoint(masked_inference_config(pretrain), pre_dir)
    rows[f"masked inference ({pretrain.mask_ratio:g})"] = {
        k.replace("_masked/", "/"): v for k, v in masked.items()}
  print(f"Stage 2: unmasked tuning in {tune_dir}", flush=True)
  rows["unmasked tuning"] = train.train_and_evaluate(tune, tune_dir)

  print(table(rows))
  if jax.process_index() == 0:
    (epath.Path(_WORKDIR.value) / "two_stage.json").write_text(json.dumps(
        {name: {k: v for k, v in r.items() if isinstance(v, (int, float))}
         for name, r in rows.items()}, indent=2))


if __name__ == "__main__":
  cli.run(main, recipe_flags=("pretrain", "tune"))
