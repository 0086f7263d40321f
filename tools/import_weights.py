"""Imports pretrained weights into a workdir (config.json + a checkpoint of the parameters).

  python tools/import_weights.py --format=open_clip --model=ViT-B-16 \\
      --checkpoint=open_clip_pytorch_model.bin --workdir=/tmp/vitb16_laion2b

--format=open_clip: an open_clip (or OpenAI CLIP) ViT state dict, as .safetensors (read without
PyTorch) or .bin/.pt/.pth (needs PyTorch): the files open_clip's hub download and
`open_clip.create_model_and_transforms(MODEL, pretrained=TAG)` cache. --model is its open_clip
model name (ViT-B-32, ViT-B-16, ViT-L-14, ViT-H-14, ..., with -quickgelu for OpenAI's weights)
or the path of its JSON model config.

--format=flip_official: the released FLIP weights (facebookresearch/flip: ViT-L/16 and ViT-H/14
trained on LAION-2B), the unzipped t5x checkpoint directory (a `checkpoint` msgpack file and one
zarr array directory per parameter), read with numpy alone.

  python tools/import_weights.py --format=flip_official \
      --checkpoint=flip_large16_laion2b_v2 --workdir=/tmp/flip_l16_laion2b

The workdir is read like any training run's: `python -m flip.evaluate --workdir=OUT` (its config
evaluates ImageNet zero-shot from TFDS; --config=... replaces it),
`flip.inference.FLIPModel.load(OUT)`, and `--config.init_from=OUT` to fine-tune (masked or not).
Names, shapes and the model config are checked before anything is written.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags

from flip import cli

FORMATS = ("open_clip", "flip_official")

_FORMAT = flags.DEFINE_enum("format", None, FORMATS, "The weights' format.")
_MODEL = flags.DEFINE_string(
    "model", None, "open_clip: the model name or its JSON config; flip_official: optional, "
    "one of flip.formats.flip_official.MODELS (default: read off the checkpoint), or a JSON "
    "dict with the numbers of heads of a model of other sizes.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "The weights file (or directory).")
_WORKDIR = flags.DEFINE_string("workdir", None, "The new workdir to write.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "The TFDS data dir of the evaluation sets (config.input.data_dir); "
    "default: TFDS's (TFDS_DATA_DIR).")
flags.mark_flags_as_required(["format", "checkpoint", "workdir"])


def _write(config, params, workdir: str, data_dir: str | None) -> int:
  """The import's workdir: its config evaluates ImageNet zero-shot as the paper reports it
  (imagenet2012 validation from `data_dir`, CLIP's 80 templates and class names); returns the
  number of parameters."""
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from flip.configs import common  # pylint: disable=g-import-not-at-top
  from flip.formats import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  common.paper_evals(config, every_steps=config.checkpoint_every_steps)
  # Only ImageNet: flip.evaluate stops at a data set that is not prepared, and the paper's COCO
  # retrieval is one more (add it with --config, see the README).
  config.evals = ml_collections.ConfigDict({"imagenet": config.evals.imagenet.to_dict()})
  config.input.data_dir = data_dir
  workdir_lib.write(config, params, workdir)
  return sum(int(x.size) for x in jax.tree.leaves(params))


def import_open_clip(model: str | None, path: str, workdir: str, data_dir: str | None = None
                     ) -> int:
  """Writes `workdir` from open_clip weights file `path` of model `model`; the #parameters."""
  from flip import config_lib  # pylint: disable=g-import-not-at-top
  from flip import errors  # pylint: disable=g-import-not-at-top
  from flip.formats import open_clip  # pylint: disable=g-import-not-at-top
  if not model:
    raise errors.ConfigError("--format=open_clip needs --model, the open_clip model name "
                             "(e.g. ViT-B-16) or its JSON model config.")
  cfg = open_clip.model_config(model)
  config = open_clip.apply(config_lib.base_config(), cfg)
  params = open_clip.to_params(open_clip.read_state_dict(path), cfg, model)
  return _write(config, params, workdir, data_dir)


def import_flip_official(model: str | None, path: str, workdir: str, data_dir: str | None = None
                         ) -> int:
  """Writes `workdir` from the released FLIP t5x checkpoint directory `path`; the #parameters.
  `model`: None (sizes read off the checkpoint), a released model's name (checked against the
  checkpoint) or a JSON dict of the numbers of heads of a model of other sizes."""
  import json  # pylint: disable=g-import-not-at-top
  from flip import config_lib  # pylint: disable=g-import-not-at-top
  from flip import errors  # pylint: disable=g-import-not-at-top
  from flip.formats import flip_official  # pylint: disable=g-import-not-at-top
  if model and model.lstrip().startswith("{"):
    try:
      model = json.loads(model)
    except json.JSONDecodeError as e:
      raise errors.ConfigError(f"--model={model!r} is not a JSON dict: {e}.") from None
  flat = flip_official.read_checkpoint(path)
  sizes = flip_official.detect(flat, model)
  config = flip_official.apply(config_lib.base_config(), sizes)
  return _write(config, flip_official.to_params(flat, sizes), workdir, data_dir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  workdir = os.path.abspath(_WORKDIR.value)
  from flip.formats import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  workdir_lib.check_new(workdir)  # before reading gigabytes of weights
  run = import_open_clip if _FORMAT.value == "open_clip" else import_flip_official
  count = run(_MODEL.value, _CHECKPOINT.value, workdir, _DATA_DIR.value)
  print(f"Imported {_FORMAT.value} {_MODEL.value or ''} ({count / 1e6:.1f}M parameters) from "
        f"{_CHECKPOINT.value} into {workdir}. Evaluate it with: python -m flip.evaluate "
        f"--workdir={workdir}")


if __name__ == "__main__":
  cli.run(main, tensorflow=False, join=False)
