"""Command-line helpers shared by flip.main and flip.evaluate."""

from __future__ import annotations

import sys

from absl import flags


def parse_flags(argv):
  """absl flag parsing, with a one-line error for a mistyped --config.field override."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    print(f"error: could not parse the flags ({type(e).__name__}: {e}). Check the spelling and "
          f"type of the overrides {overrides}: every config field and its type is defined in "
          "flip/config_lib.py:base_config().", file=sys.stderr)
    sys.exit(2)
