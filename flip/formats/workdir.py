"""Imported weights as an ordinary workdir: config.json plus a checkpoint of the parameters.

`write(config, params, workdir)` is what tools/import_weights.py ends with: flip.evaluate,
flip.inference.FLIPModel.load and config.init_from (fine-tuning, masked or not) read the result
like any training run's workdir. The checkpoint (step 0) holds the parameters only, no
optimizer state: a run started from it (init_from) begins with a fresh optimizer.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flip import checkpoint
from flip import config_lib
from flip import errors
from flip.formats import hub


def check_new(workdir: str) -> None:
  """errors.ConfigError if `workdir` already holds a run (checked before any import work)."""
  if os.path.exists(os.path.join(workdir, "checkpoints")) or os.path.exists(
      os.path.join(workdir, "config.json")):
    raise errors.ConfigError(f"{workdir} already holds a run: import into a new directory.")


def write(config: ml_collections.ConfigDict, params: dict, workdir: str) -> str:
  """Writes config.json and checkpoints/0 (the parameters) to `workdir`; returns the workdir."""
  config = config_lib.resolve(config)
  check_new(workdir)
  params = hub.check_params(config, jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), params))
  checkpoint.check_writable(workdir)
  checkpoint.write_config(config, workdir)
  ckpt = checkpoint.Checkpointer(workdir)
  try:
    ckpt.save(0, {"params": params}, force=True)
  finally:
    ckpt.close()
  return workdir
