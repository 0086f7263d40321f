"""Evaluation: zero-shot classification, retrieval and linear probes (config.evals).

`make_evaluators`, `evaluate_checkpoint` and `TYPES` live in flip.evaluation.suite and are
imported on first use, so that light submodules (prompts, metrics) load without the evaluation
data stack (flip.inference uses the prompts).
"""

_SUITE = ("make_evaluator", "make_evaluators", "evaluate_checkpoint", "TYPES")


def __getattr__(name):
  if name in _SUITE:
    from flip.evaluation import suite  # pylint: disable=g-import-not-at-top
    return getattr(suite, name)
  raise AttributeError(f"module 'flip.evaluation' has no attribute {name!r}")
