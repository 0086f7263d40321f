"""Evaluates a checkpoint: python -m flip.evaluate --workdir=DIR [--config=RECIPE] [--step=N]
(or flip-evaluate ...).

Runs every evaluator of config.evals (zero-shot classification, retrieval, linear probe) on the
newest checkpoint of the workdir (or --step), prints the metrics, writes them to the workdir's
TensorBoard logs at that step and, with --json, to a file. The config defaults to the one the run
saved (workdir/config.json); --config (a recipe file or name, with --config.field overrides)
replaces it, e.g. to add evaluators. No training data is read.
"""

from __future__ import annotations

import json

from absl import app
from absl import flags
from ml_collections import config_flags

from flip import cli
from flip import distributed

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Recipe file or name; default: the workdir's config.json.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir with checkpoints.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_JSON = flags.DEFINE_string("json", None, "Also write the metrics to this JSON file.")
flags.mark_flags_as_required(["workdir"])
flags.adopt_module_key_flags(distributed)  # --coordinator_address etc. in --help


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  import jax  # pylint: disable=g-import-not-at-top
  from flip import checkpoint  # pylint: disable=g-import-not-at-top
  from flip import evaluation  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value if _CONFIG.value is not None else checkpoint.read_config(_WORKDIR.value)
  results = evaluation.evaluate_checkpoint(config, _WORKDIR.value, _STEP.value)
  for key, value in results.items():
    print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
  if _JSON.value and jax.process_index() == 0:  # every process has the same metrics
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=2)


def run():
  """The flip-evaluate console script."""
  cli.run(main)


if __name__ == "__main__":
  run()
