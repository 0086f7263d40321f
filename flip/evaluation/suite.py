"""The evaluators of config.evals, and the evaluation of a checkpoint (python -m flip.evaluate)."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from jax.experimental import multihost_utils

from flip import checkpoint
from flip import config_lib
from flip import errors
from flip import sharding
from flip.data import tokenizer as tokenizer_lib
from flip.evaluation import embed
from flip.evaluation import linear_probe
from flip.evaluation import retrieval
from flip.evaluation import zeroshot
from flip.models import flip as flip_lib

TYPES = {"zeroshot": zeroshot.ZeroShot, "retrieval": retrieval.Retrieval,
         "linear_probe": linear_probe.LinearProbe}


def make_evaluator(options, config: ml_collections.ConfigDict, embedder: embed.Embedder,
                   name: str = "evaluator"):
  """One evaluator from its options (config.evals.<name>: type, every_steps and the type's
  options; missing ones take config_lib.EVALUATORS' defaults) for a resolved config."""
  options = dict(config_lib.resolve_evaluator(name, dict(options)))
  kind = options.pop("type")
  del options["every_steps"]
  options["data_dir"] = options["data_dir"] or config.input.data_dir
  return TYPES[kind](embedder, image_size=config.input.image_size, **options)


def make_evaluators(config: ml_collections.ConfigDict, embedder: embed.Embedder,
                    missing_ok: bool = False) -> dict:
  """The evaluators of a resolved config's config.evals. With `missing_ok` (during training),
  one whose data set is not downloaded is left out with a warning; any other problem is an
  error."""
  evaluators = {}
  for name, ev in config.evals.items():
    try:
      evaluators[name] = make_evaluator(ev.to_dict(), config, embedder, name)
    except FileNotFoundError as e:
      if not missing_ok:
        raise
      logging.warning("Evaluator %s is left out: %s Training goes on without it.", name, e)
  check_same_everywhere(list(config.evals), evaluators)
  return evaluators


def check_same_everywhere(names: list[str], evaluators: dict) -> None:
  """Every process must run the same evaluators (they are collectives): a data set present on
  some hosts only would otherwise hang the run at its first evaluation. `names`: all that were
  asked for; `evaluators`: those this process could build. Nothing to check in one process."""
  if jax.process_count() == 1:
    return
  names = sorted(names)
  have = np.asarray(multihost_utils.process_allgather(
      np.array([name in evaluators for name in names], np.int32)))
  for j, name in enumerate(names):
    if have[:, j].any() and not have[:, j].all():
      raise errors.NotFoundError(
          f"Evaluator {name}'s data set was found by process(es) "
          f"{np.flatnonzero(have[:, j]).tolist()} but not by "
          f"{np.flatnonzero(have[:, j] == 0).tolist()}: put evaluation data sets in a "
          "config.input.data_dir that every host sees (e.g. gs://bucket/tensorflow_datasets).")


def load_model(config: ml_collections.ConfigDict, workdir: str, step: int | None = None):
  """(resolved config, embedder, params, step) of a checkpoint of `workdir` (default: its
  newest); the optimizer state is not read."""
  config = config_lib.resolve(config)
  mesh = sharding.make_mesh(config.mesh)
  tokenizer = tokenizer_lib.from_config(config.input)
  tokenizer_lib.check_vocab_size(tokenizer, config.model.text.vocab_size)
  model = flip_lib.from_config(config.model)
  params, step = checkpoint.load_params(workdir, flip_lib.abstract_params(config, mesh), step)
  batch = max(sharding.batch_ways(mesh), min(config.input.global_batch_size, 1024))
  embedder = embed.Embedder(model, tokenizer, mesh, batch, config.logical_axis_rules)
  return config, embedder, params, step


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        step: int | None = None) -> dict[str, float]:
  """{evaluator/metric: value} of a checkpoint of `workdir` (default: its newest) under
  `config.evals`, also written to the workdir's TensorBoard logs (python -m flip.evaluate)."""
  if not config.evals:
    raise errors.ConfigError("config.evals declares no evaluator: add one, e.g. "
                             "--config=configs/demo.py, or see the README's evaluation section.")
  config, embedder, params, step = load_model(config, workdir, step)
  evaluators = make_evaluators(config, embedder)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  results = {}
  for name, evaluator in evaluators.items():
    metrics = {f"{name}/{k}": v for k, v in evaluator(params).items()}
    writer.write_scalars(step, metrics)
    results.update(metrics)
  writer.flush()
  results["step"] = step
  return results
