"""The evaluators of config.evals, and the evaluation of a checkpoint (python -m flip.evaluate)."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from jax.experimental import multihost_utils

from flip import checkpoint
from flip import optim
from flip import sharding
from flip import train_step
from flip.data import tokenizer as tokenizer_lib
from flip.evaluation import encode
from flip.evaluation import linear_probe
from flip.evaluation import retrieval
from flip.evaluation import zeroshot
from flip.models import flip as flip_lib

TYPES = {"zeroshot": zeroshot.ZeroShot, "retrieval": retrieval.Retrieval,
         "linear_probe": linear_probe.LinearProbe}


def make_evaluators(config: ml_collections.ConfigDict, encoder: encode.Encoder,
                    missing_ok: bool = False) -> dict:
  """The evaluators of config.evals. With `missing_ok` (during training), one whose data set is
  not downloaded is left out with a warning; any other problem is an error."""
  evaluators = {}
  for name, ev in config.evals.items():
    if ev.type not in TYPES:
      raise ValueError(f"config.evals.{name}.type={ev.type!r} is unknown; choose one of "
                       f"{sorted(TYPES)}.")
    try:
      evaluators[name] = TYPES[ev.type](ev, config, encoder)
    except FileNotFoundError as e:
      if not missing_ok:
        raise
      logging.warning("Evaluator %s is left out: %s Training goes on without it.", name, e)
  if jax.process_count() > 1:
    _check_same_everywhere(config, evaluators)
  return evaluators


def _check_same_everywhere(config: ml_collections.ConfigDict, evaluators: dict) -> None:
  """Every process must run the same evaluators (they are collectives): a data set present on
  some hosts only would otherwise hang the run at its first evaluation."""
  names = sorted(config.evals)
  have = np.asarray(multihost_utils.process_allgather(
      np.array([name in evaluators for name in names], np.int32)))
  for j, name in enumerate(names):
    if have[:, j].any() and not have[:, j].all():
      raise FileNotFoundError(
          f"Evaluator {name}'s data set was found by process(es) "
          f"{np.flatnonzero(have[:, j]).tolist()} but not by "
          f"{np.flatnonzero(have[:, j] == 0).tolist()}: put evaluation data sets in a "
          "config.input.data_dir that every host sees (e.g. gs://bucket/tensorflow_datasets).")


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        step: int | None = None) -> dict[str, float]:
  """{evaluator/metric: value} of a checkpoint of `workdir` (default: its newest) under
  `config.evals`, also written to the workdir's TensorBoard logs (python -m flip.evaluate)."""
  if not config.evals:
    raise ValueError("config.evals declares no evaluator: add one, e.g. "
                     "--config=configs/demo.py, or see the README's evaluation section.")
  mesh = sharding.make_mesh(config.mesh)
  tokenizer = tokenizer_lib.Tokenizer(config.input.vocab_path, config.input.text_len)
  tokenizer_lib.check_vocab_size(tokenizer, config.model.text.vocab_size)
  model = flip_lib.from_config(config.model)
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  if ckpt.latest_step() is None:
    raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints: train first, or point "
                            "--workdir at a training run.")
  _, abstract = train_step.init_state(config, model, optim.make(config), mesh)
  step = ckpt.latest_step() if step is None else step
  params = ckpt.restore_params(abstract.params, step)  # the optimizer state is not read
  ckpt.close()
  batch = max(sharding.batch_ways(mesh), min(config.input.global_batch_size, 1024))
  evaluators = make_evaluators(config, encode.Encoder(
      model, tokenizer, mesh, batch, config.logical_axis_rules))
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  results = {}
  for name, evaluator in evaluators.items():
    metrics = {f"{name}/{k}": v for k, v in evaluator(params).items()}
    writer.write_scalars(step, metrics)
    results.update(metrics)
  writer.flush()
  results["step"] = step
  return results
