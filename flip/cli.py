"""The one entry-point wrapper of flip.main, flip.evaluate and every tool: `run(main)`.

  def main(argv): ...
  if __name__ == "__main__":
    cli.run(main)

`run` does, in order: restart the process once with glibc huge pages where that helps
(flip/hostmem.py; before JAX starts), resolve `--config=NAME` to a packaged recipe, parse the
flags (a mistyped `--config.field` override is one line naming the overrides), keep TensorFlow
(tf.data only) off the accelerators, join a multi-process run (flip.distributed.initialize), and
call `main`. Error policy: an expected user error (flip.errors.FlipError, raised by the checks
with a message saying what to change) prints one line, `error: <message>`, and exits with status
1; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging

from flip import distributed
from flip import errors
from flip import hostmem


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


def recipe_argv(argv: list[str], recipe_flags: tuple[str, ...] = ("config",)) -> list[str]:
  """`--config=NAME[:arg]` (a packaged recipe, e.g. vitl16_mask50) -> `--config=<its file>[:arg]`
  for each flag of `recipe_flags`; a path to an existing file, or any other flag, is kept."""
  out = []
  for i, arg in enumerate(argv):
    flag, value = None, None
    for name in recipe_flags:
      if arg.startswith(f"--{name}="):
        flag, value = name, arg[len(name) + 3:]
      elif i > 0 and argv[i - 1] == f"--{name}":
        value = arg
    if value is not None:
      path, sep, recipe_arg = value.partition(":")
      if path and not os.path.exists(path) and os.sep not in path:
        from flip import config_lib  # pylint: disable=g-import-not-at-top
        try:
          path = config_lib.recipe_path(path)
        except errors.FlipError as e:
          print(f"error: {arg}: {e}", file=sys.stderr)
          sys.exit(2)
        arg = (f"--{flag}={path}" if flag else path) + sep + recipe_arg
    out.append(arg)
  return out


def _call(main: Callable, tensorflow: bool, join: bool, argv):
  if tensorflow:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")  # tf.data only; the accelerators belong to JAX
  try:
    if join:
      distributed.initialize()  # a multi-process run: joins it, before any other JAX use
    return main(argv)
  except errors.FlipError as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def run(main: Callable, *, tensorflow: bool = True, join: bool = True,
        huge_pages: bool = True, recipe_flags: tuple[str, ...] = ("config",)) -> None:
  """Runs `main(argv)` as an entry point (see the module docstring).

  tensorflow=False: the program does not use TensorFlow (it is then not imported, e.g. the
  benchmark on accelerator hosts without it); join=False: it does not use JAX across processes
  (data conversion tools, or a program that configures JAX's devices itself); huge_pages=False:
  no restart with glibc huge pages; recipe_flags: the config-file flags that take recipe names.
  """
  if huge_pages:
    hostmem.reexec_with_huge_pages()  # before JAX starts: see flip/hostmem.py
  sys.argv = recipe_argv(sys.argv, recipe_flags)
  app.run(functools.partial(_call, main, tensorflow, join), flags_parser=parse_flags)
