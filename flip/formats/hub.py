"""Exports of a workdir: a model-hub folder (safetensors) and an open_clip folder.

Model-hub folder (tools/export.py --format=safetensors), the layout hubs use:
  model.safetensors   every parameter, float32, named by its path ("image/encoder/block00/
                      attn/query/kernel"; unrolled blocks), metadata {"format": HUB_FORMAT}
  config.json         the run's resolved config
  vocab.txt | bpe_simple_vocab_16e6.txt.gz   the tokenizer's vocabulary
flip.inference.FLIPModel.load(folder) reads it (numpy and JAX only).

open_clip folder (tools/export.py --format=open_clip), what open_clip's `local-dir:` schema and
`create_model_and_transforms(MODEL, pretrained=FILE)` read:
  open_clip_model.safetensors   the state dict (open_clip's names and PyTorch layouts)
  open_clip_config.json         {"model_cfg": ..., "preprocess_cfg": ...}
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import ml_collections
import numpy as np

from flip import config_lib
from flip import errors
from flip import sharding
from flip.formats import open_clip
from flip.formats import safetensors
from flip.models import convert
from flip.models import flip as flip_lib

HUB_FORMAT = "flip-hub-v1"
WEIGHTS = "model.safetensors"


def check_params(config: ml_collections.ConfigDict, params: dict) -> dict:
  """`params` (unrolled or scanned blocks) in the layout and dtypes of config's model, on one
  device; every name and shape checked (errors.CheckpointMismatchError names the parameter and
  both shapes)."""
  return convert.adapt(params, flip_lib.abstract_params(config, sharding.one_device_mesh()),
                       resample=False)


def flatten(params) -> dict[str, np.ndarray]:
  """{"image/encoder/block00/...": array} of a parameter tree, blocks unrolled."""
  params = jax.tree.map(np.asarray, params)
  params = dict(params)
  for tower in ("image", "text"):
    params[tower] = {**params[tower],
                     "encoder": convert.to_layout(dict(params[tower]["encoder"]), "unrolled")}
  return {name: np.asarray(x, np.float32) for name, x in convert.flatten(params).items()}


def vocab_file(config: ml_collections.ConfigDict) -> str:
  """The tokenizer's vocabulary file of a resolved config."""
  if config.input.vocab_path:
    return config.input.vocab_path
  if config.input.tokenizer == "bpe":
    from flip.data import bpe  # pylint: disable=g-import-not-at-top
    return bpe.DEFAULT_VOCAB
  from flip.data import tokenizer  # pylint: disable=g-import-not-at-top
  return tokenizer.DEFAULT_VOCAB


VOCAB_NAMES = ("vocab.txt", "bpe_simple_vocab_16e6.txt.gz")  # WordPiece, BPE: in an export


def vocab_name(config: ml_collections.ConfigDict) -> str:
  return VOCAB_NAMES[config.input.tokenizer == "bpe"]


def _fresh_dir(path: str) -> None:
  if os.path.exists(path) and os.listdir(path):
    raise errors.ConfigError(f"{path} exists and is not empty: export into a new directory.")
  os.makedirs(path, exist_ok=True)


def write_hub(config: ml_collections.ConfigDict, params, path: str) -> str:
  """Writes the model-hub folder of a resolved config and its parameters; returns `path`."""
  _fresh_dir(path)
  safetensors.write(os.path.join(path, WEIGHTS), flatten(params), {"format": HUB_FORMAT})
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  shutil.copyfile(vocab_file(config), os.path.join(path, vocab_name(config)))
  return path


def is_hub(path: str) -> bool:
  return os.path.isdir(path) and os.path.exists(os.path.join(path, WEIGHTS)) and \
      os.path.exists(os.path.join(path, "config.json"))


def read_hub(path: str) -> tuple[ml_collections.ConfigDict, dict, str]:
  """(resolved config, parameters, vocabulary file) of a model-hub folder."""
  flat, meta = safetensors.read(os.path.join(path, WEIGHTS))
  if meta.get("format") != HUB_FORMAT:
    raise errors.DataError(f"{path}/{WEIGHTS} is not a FLIP export (format "
                           f"{meta.get('format')!r}, expected {HUB_FORMAT!r}).")
  with open(os.path.join(path, "config.json")) as f:
    config = config_lib.resolve(config_lib.from_json(f.read()))
  vocab = os.path.join(path, vocab_name(config))
  if not os.path.exists(vocab):
    raise errors.NotFoundError(f"{path} lacks its tokenizer file {os.path.basename(vocab)}.")
  return config, check_params(config, convert.unflatten(flat)), vocab


def write_open_clip(config: ml_collections.ConfigDict, params, path: str) -> str:
  """Writes the open_clip folder of a resolved config and its parameters; errors.ConfigError,
  before anything is written, naming what open_clip cannot express."""
  cfg = open_clip.config_of(config)
  state = open_clip.from_params(convert.unflatten(flatten(params)), cfg)
  _fresh_dir(path)
  safetensors.write(os.path.join(path, "open_clip_model.safetensors"), state, {"format": "pt"})
  with open(os.path.join(path, "open_clip_config.json"), "w") as f:
    json.dump({"model_cfg": cfg, "preprocess_cfg": open_clip.preprocess_config(config)}, f,
              indent=2)
  return path
