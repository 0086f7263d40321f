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
evaluates ImageNet zero-shot and COCO retrieval from TFDS; --config=... replaces it),
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


def import_open_clip(model: str | None, path: str, workdir: str, data_dir: str | None = None
                     ) -> tuple[object, int]:
  """Writes `workdir` from open_clip weights file `path` of model `model`; (config, #params)."""
  from flip import config_lib  # pylint: disable=g-import-not-at-top
  from flip.configs import common  # pylint: disable=g-import-not-at-top
  from flip.formats import open_clip  # pylint: disable=g-import-not-at-top
  from flip.formats import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  if not model:
    from flip import errors  # pylint: disable=g-import-not-at-top
    raise errors.ConfigError("--format=open_clip needs --model, the open_clip model name "
                             "(e.g. ViT-B-16) or its JSON model config.")
  cfg = open_clip.model_config(model)
  config = open_clip.apply(config_lib.base_config(), cfg)
  common.paper_evals(config, every_steps=config.checkpoint_every_steps)
  config.input.data_dir = data_dir
  state = open_clip.read_state_dict(path)
  params = open_clip.to_params(state, cfg, model)
  workdir_lib.write(config, params, workdir)
  return config, sum(int(x.size) for x in state.values())  # (all of them are parameters)


def import_flip_official(model: str | None, path: str, workdir: str, data_dir: str | None = None
                         ) -> tuple[object, int]:
  """Writes `workdir` from the released FLIP t5x checkpoint directory `path`; (config, #params)."""
  from flip import config_lib  # pylint: disable=g-import-not-at-top
  from flip.configs import common  # pylint: disable=g-import-not-at-top
  from flip.formats import flip_official  # pylint: disable=g-import-not-at-top
  from flip.formats import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  flat = flip_official.read_checkpoint(path)
  if model and model.lstrip().startswith("{"):  # sizes of one's own, e.g. '{"image_heads": 4,
    import json  # pylint: disable=g-import-not-at-top  # "text_heads": 4}'
    model = json.loads(model)
  sizes = flip_official.detect(flat, model)  # a named model is checked against the shapes
  config = flip_official.apply(config_lib.base_config(), sizes)
  common.paper_evals(config, every_steps=config.checkpoint_every_steps)
  config.input.data_dir = data_dir
  params = flip_official.to_params(flat, sizes)
  workdir_lib.write(config, params, workdir)
  import jax  # pylint: disable=g-import-not-at-top
  return config, sum(int(x.size) for x in jax.tree.leaves(params))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  workdir = os.path.abspath(_WORKDIR.value)
  run = import_open_clip if _FORMAT.value == "open_clip" else import_flip_official
  _, count = run(_MODEL.value, _CHECKPOINT.value, workdir, _DATA_DIR.value)
  print(f"Imported {_FORMAT.value} {_MODEL.value or ''} ({count / 1e6:.1f}M parameters) from "
        f"{_CHECKPOINT.value} into {workdir}. Evaluate it with: python -m flip.evaluate "
        f"--workdir={workdir}")


if __name__ == "__main__":
  cli.run(main, tensorflow=False, join=False)
