"""Entry point: python -m flip.main --config=configs/<recipe>.py[:arg] --workdir=DIR."""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from flip import cli
from flip import distributed
from flip import hostmem

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Recipe file, e.g. configs/demo.py or configs/vitl16_mask50.py:local.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics; a run "
                               "resumes from its latest checkpoint here.")
flags.mark_flags_as_required(["config", "workdir"])
flags.adopt_module_key_flags(distributed)  # --coordinator_address etc. in --help


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; use --config.field=value overrides.")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")  # tf.data only; the accelerators belong to JAX
  from flip import train  # pylint: disable=g-import-not-at-top
  logging.info("Config:\n%s", _CONFIG.value)
  try:
    distributed.initialize()  # a multi-process run: joins it, before any other JAX use
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError, PermissionError, FloatingPointError,
          ConnectionError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  hostmem.reexec_with_huge_pages()  # before JAX starts: see flip/hostmem.py
  app.run(main, flags_parser=cli.parse_flags)
