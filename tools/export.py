"""Exports a trained FLIP to one portable file for flip.inference (and Colab).

  python tools/export.py --workdir=/tmp/flip_demo --out=/tmp/flip_demo.flip [--step=N]

The file is a zip of params.msgpack (flax.serialization: every parameter as a numpy array),
config.json (the run's config) and vocab.txt (its WordPiece vocabulary);
`flip.inference.FLIPModel.load(path)` reads it with no checkpointing or training code.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags

from flip import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.")
_OUT = flags.DEFINE_string("out", None, "The file to write, e.g. model.flip.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  from flip import inference  # pylint: disable=g-import-not-at-top
  path = inference.export(_WORKDIR.value, _OUT.value, _STEP.value)
  print(f"Wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB); load it with "
        f"flip.inference.FLIPModel.load({path!r}).")


if __name__ == "__main__":
  cli.run(main)
