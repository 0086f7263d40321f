"""The one entry-point wrapper of flip.main, flip.evaluate and every tool: `run(main)`.

  def main(argv): ...
  if __name__ == "__main__":
    cli.run(main)

`run` does, in order: restart the process once with glibc huge pages where that helps
(flip/hostmem.py; before JAX starts), route stderr through flip/stderr_filter.py, resolve `--config=NAME` to a packaged recipe, parse the
flags (a mistyped `--config.field` override is one line naming the overrides), keep TensorFlow
(tf.data only) off the accelerators, join a multi-process run (flip.distributed.initialize), and
call `main`. Error policy: an expected user error (flip.errors.FlipError, raised by the checks
with a message saying what to change) prints one line, `error: <message>`, and exits with status
1; any other exception is a bug and keeps its traceback. A run stopped by SIGTERM or SIGINT after
saving its checkpoint (flip.errors.Interrupted) prints its one line and exits with 128 + the
signal (143, 130). A failed or interrupted run exits at once after its output (os._exit: see
flip.data.pipeline.keep_alive).
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from typing import Callable

from absl import app
from absl import flags
from absl import logging

from flip import distributed
from flip import errors
from flip import hostmem
from flip import stderr_filter


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


def recipe_argv(argv: list[str], recipe_flags: tuple[str, ...] = ("config",),
                package: str | None = None) -> list[str]:
  """`--config=NAME[:arg]` (a packaged recipe, e.g. vitl16_mask50) -> `--config=<its file>[:arg]`
  for each flag of `recipe_flags`; a path to an existing file, or any other flag, is kept.
  `package`: where the names are looked up (default config_lib.RECIPES)."""
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
          path = config_lib.recipe_path(path, package or config_lib.RECIPES)
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
  except errors.Interrupted as e:  # stopped by a signal, with a checkpoint: not an error
    logging.warning("%s", e)
    print(str(e), file=sys.stderr)
    sys.exit(e.exit_status)
  except errors.FlipError as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def run(main: Callable, *, tensorflow: bool = True, join: bool = True,
        huge_pages: bool = True, recipe_flags: tuple[str, ...] = ("config",),
        task_flags: tuple[str, ...] = ()) -> None:
  """Runs `main(argv)` as an entry point (see the module docstring).

  tensorflow=False: the program does not use TensorFlow (it is then not imported, e.g. the
  benchmark on accelerator hosts without it); join=False: it does not use JAX across processes
  (data conversion tools, or a program that configures JAX's devices itself); huge_pages=False:
  no restart with glibc huge pages; recipe_flags: the config-file flags that take recipe names;
  task_flags: those that take the names of flip.benchmark_suite's task lists.
  """
  if huge_pages:
    hostmem.reexec_with_huge_pages()  # before JAX starts: see flip/hostmem.py
  stderr_filter.install()  # libjpeg's lines about broken images stay off the console
  sys.argv = recipe_argv(sys.argv, recipe_flags)
  if task_flags:
    from flip import config_lib  # pylint: disable=g-import-not-at-top
    sys.argv = recipe_argv(sys.argv, task_flags, config_lib.TASK_LISTS)
  try:
    app.run(functools.partial(_call, main, tensorflow, join), flags_parser=parse_flags)
  except SystemExit as e:
    if e.code not in (None, 0):
      _exit_now(e.code if isinstance(e.code, int) else 1)
    raise
  except Exception:  # noqa: BLE001  (a bug: its traceback, then the same prompt exit)
    traceback.print_exc()
    _exit_now(1)


def _exit_now(status: int) -> None:
  """Ends a failed or interrupted run at once, its output flushed: the interpreter's own exit
  would destroy a tf.data iterator left mid-stream, which can hang (pipeline.keep_alive). Its
  checkpoints are already complete (the training loop finished every save first)."""
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  stderr_filter.drain()
  os._exit(status)  # pylint: disable=protected-access
