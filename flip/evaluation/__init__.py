"""Evaluators declared in config.evals: each maps params to {metric name: value}."""

from __future__ import annotations

import ml_collections

from flip.evaluation import encode
from flip.evaluation import retrieval
from flip.evaluation import zeroshot

TYPES = {"zeroshot": zeroshot.ZeroShot, "retrieval": retrieval.Retrieval}


def make_evaluators(config: ml_collections.ConfigDict, encoder: encode.Encoder) -> dict:
  evaluators = {}
  for name, ev in config.evals.items():
    if ev.type not in TYPES:
      raise ValueError(f"config.evals.{name}.type={ev.type!r} is unknown; choose one of "
                       f"{sorted(TYPES)}.")
    evaluators[name] = TYPES[ev.type](ev, config, encoder)
  return evaluators
