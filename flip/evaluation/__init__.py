"""Evaluators declared in config.evals: each maps params to {metric name: value}."""

from __future__ import annotations

import ml_collections
from absl import logging

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
  return evaluators
