"""Evaluators declared in config.evals: each maps params to {metric name: value}."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from flip.evaluation import encode
from flip.evaluation import linear_probe
from flip.evaluation import retrieval
from flip.evaluation import zeroshot

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
