"""Starting a run from another run's parameters (config.init_from): the unmasked tuning stage
after masked pretraining, or any fine-tuning. The optimizer state is not carried over."""

from __future__ import annotations

import jax
import ml_collections
from absl import logging
from jax.sharding import Mesh

from flip import checkpoint
from flip.models import convert
from flip.models import flip as flip_lib


def initial_params(config: ml_collections.ConfigDict, mesh: Mesh, target_abstract_params):
  """The parameters of the run in config.init_from (its newest checkpoint, or config.init_step),
  mapped onto this config's model (see flip.models.convert) and sharded like
  `target_abstract_params`."""
  source = checkpoint.read_config(config.init_from)  # errors.NotFoundError: not a workdir
  source.logical_axis_rules = config.logical_axis_rules  # placed by this run's rules and mesh
  params, step = checkpoint.load_params(config.init_from, flip_lib.abstract_params(source, mesh),
                                        config.init_step)
  logging.info("Initialised from %s step %d (pretrained with mask ratio %s at %d px).",
               config.init_from, step, source.mask_ratio, source.input.image_size)
  params = convert.adapt(params, target_abstract_params)
  return jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), params, target_abstract_params)
