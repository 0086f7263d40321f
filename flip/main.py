"""Entry point: python -m flip.main --config=<recipe>[:arg] --workdir=DIR (or flip-train ...).

--config is a recipe file (configs/vitl16_mask50.py) or the name of a packaged recipe
(vitl16_mask50); `:local` shrinks it to run on one CPU, `:mask=0.75` sets the mask ratio.
"""

from __future__ import annotations

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from flip import cli
from flip import distributed

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Recipe: a file (configs/demo.py) or a packaged recipe's name (demo, "
    "vitl16_mask50), optionally with :arg, e.g. vitl16_mask50:local.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics; a run "
                               "resumes from its latest checkpoint here.")
flags.mark_flags_as_required(["config", "workdir"])
flags.adopt_module_key_flags(distributed)  # --coordinator_address etc. in --help


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; use --config.field=value overrides.")
  from flip import train  # pylint: disable=g-import-not-at-top
  logging.info("Config:\n%s", _CONFIG.value)
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def run():
  """The flip-train console script."""
  cli.run(main)


if __name__ == "__main__":
  run()
