"""Exports a trained (or imported) FLIP for use elsewhere.

  python tools/export.py --workdir=/tmp/flip_demo --out=/tmp/flip_demo.flip [--step=N]
  python tools/export.py --format=safetensors --workdir=RUN --out=DIR
  python tools/export.py --format=open_clip --workdir=RUN --out=DIR

--format=flip (default): one portable zip of params.msgpack, config.json and the tokenizer's
  vocabulary, read by `flip.inference.FLIPModel.load(path)` (no checkpointing or training code).
--format=safetensors: a folder in the layout model hubs use (model.safetensors, config.json and
  the tokenizer's vocabulary), read by `FLIPModel.load(DIR)`.
--format=open_clip: a folder open_clip loads, `open_clip.create_model_and_transforms(
  "local-dir:DIR")` or `create_model_and_transforms(MODEL, pretrained="DIR/
  open_clip_model.safetensors")`: for models open_clip can express (the ViT CLIP architecture,
  e.g. one imported with tools/import_weights.py); for others the error names what it lacks.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags

from flip import cli

_FORMAT = flags.DEFINE_enum("format", "flip", ("flip", "safetensors", "open_clip"),
                            "What to write (see the module docstring).")
_WORKDIR = flags.DEFINE_string("workdir", None, "A training (or import) workdir.")
_OUT = flags.DEFINE_string("out", None, "The file (flip) or new directory to write.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
flags.mark_flags_as_required(["workdir", "out"])


def _size(path: str) -> float:
  if os.path.isfile(path):
    return os.path.getsize(path) / 1e6
  return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 1e6


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  from flip import inference  # pylint: disable=g-import-not-at-top
  if _FORMAT.value == "flip":
    path = inference.export(_WORKDIR.value, _OUT.value, _STEP.value)
    how = f"flip.inference.FLIPModel.load({path!r})"
  else:
    from flip.formats import hub  # pylint: disable=g-import-not-at-top
    config, params = inference.workdir_config_and_params(_WORKDIR.value, _STEP.value)
    if _FORMAT.value == "safetensors":
      path = hub.write_hub(config, params, _OUT.value)
      how = f"flip.inference.FLIPModel.load({path!r})"
    else:
      path = hub.write_open_clip(config, params, _OUT.value)
      how = f"open_clip.create_model_and_transforms('local-dir:{path}')"
  print(f"Wrote {path} ({_size(path):.1f} MB); load it with {how}.")


if __name__ == "__main__":
  cli.run(main)
