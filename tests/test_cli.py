"""The entry-point wrapper (flip.cli): one error policy, recipes by name."""

import os

import pytest

import forkserver
from flip import cli
from flip import config_lib
from flip import errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _call(main):
  return cli._call(main, False, False, ["prog"])  # pylint: disable=protected-access


def test_expected_errors_print_one_line_and_exit_1(capsys):
  def main(argv):
    del argv
    raise errors.ConfigError("config.mask_ratio=1.5 must be in [0, 1).")

  with pytest.raises(SystemExit) as exit_info:
    _call(main)
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  assert err == "error: config.mask_ratio=1.5 must be in [0, 1).\n"


@pytest.mark.parametrize("error", [ValueError("a bug"), FileNotFoundError("a bug"),
                                   KeyError("a bug"), RuntimeError("a bug")])
def test_other_errors_keep_their_traceback(error):
  """Built-in exceptions are not shortened: they are bugs (or unexpected) and propagate."""
  def main(argv):
    del argv
    raise error

  with pytest.raises(type(error)):
    _call(main)


def test_flip_errors_are_also_the_builtin_kinds():
  assert issubclass(errors.ConfigError, ValueError)
  assert issubclass(errors.NotFoundError, FileNotFoundError)
  assert issubclass(errors.NotWritableError, PermissionError)
  assert issubclass(errors.DivergedError, FloatingPointError)
  assert issubclass(errors.DistributedError, ConnectionError)


def test_recipe_names_become_their_files(tmp_path):
  path = config_lib.recipe_path("vitl16_mask50")
  assert path.endswith("vitl16_mask50.py")
  argv = ["prog", "--config=vitl16_mask50:local,mask=0.75", "--workdir=/tmp/x",
          "--config.total_steps=3"]
  assert cli.recipe_argv(argv) == ["prog", f"--config={path}:local,mask=0.75", "--workdir=/tmp/x",
                                   "--config.total_steps=3"]
  assert cli.recipe_argv(["prog", "--config", "demo"]) == [
      "prog", "--config", config_lib.recipe_path("demo")]
  # Files (existing, or with a directory) are kept; other flags too.
  recipe = tmp_path / "mine.py"
  recipe.write_text("")
  kept = ["prog", f"--config={recipe}:local", "--config=configs/demo.py", "--tune=demo"]
  assert cli.recipe_argv(kept) == kept
  assert cli.recipe_argv(["prog", "--tune=demo"], ("tune",)) == [
      "prog", f"--tune={config_lib.recipe_path('demo')}"]


def test_unknown_recipe_name_is_one_line(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.recipe_argv(["prog", "--config=vitl16_mask51"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "vitl16_mask50" in err and "vitl16_mask51" in err


def test_interrupted_runs_print_their_line_and_exit_128_plus_the_signal(capsys):
  def main(argv):
    del argv
    raise errors.Interrupted("Stopped by SIGTERM after step 5 of 9: checkpoint 5 saved.", 15)

  with pytest.raises(SystemExit) as exit_info:
    _call(main)
  assert exit_info.value.code == 143
  assert capsys.readouterr().err == "Stopped by SIGTERM after step 5 of 9: checkpoint 5 saved.\n"


NOISE = [b"Corrupt JPEG data: 2 extraneous bytes before marker 0xd9",
         b"Premature end of JPEG file", b"Improper call to JPEG library in state 201",
         b"libpng warning: iCCP: known incorrect sRGB profile",
         b"W0000 00:00:1796235518.661884   20310 local_rendezvous.cc:412] Local rendezvous is "
         b"aborting with status: INVALID_ARGUMENT: jpeg::Uncompress failed. Invalid JPEG data or "
         b"crop window."]


def test_stderr_filter_drops_image_library_lines_only():
  import os
  import threading
  from flip import stderr_filter
  kept = [b"I1202 step 3/10 | loss 2.1", b"Traceback (most recent call last):",
          b"  Corrupt JPEG data in a quoted traceback line stays", b"error: something to fix"]
  read_in, write_in = os.pipe()
  read_out, write_out = os.pipe()
  forwarder = threading.Thread(target=stderr_filter.forward, args=(read_in, write_out))
  forwarder.start()
  for line in [NOISE[0], kept[0], NOISE[1], kept[1], kept[2]] + NOISE[2:] + [kept[3]]:
    os.write(write_in, line + b"\n")
  os.write(write_in, b"a partial line")
  os.close(write_in)
  forwarder.join(10)
  os.close(write_out)
  with os.fdopen(read_out, "rb") as f:
    assert f.read() == b"".join(k + b"\n" for k in kept) + b"a partial line"


@pytest.mark.slow
def test_entry_points_filter_stderr_and_pass_on_a_crash():
  """Through cli.run: TensorFlow's libjpeg line for a corrupt JPEG is dropped; what the process
  writes just before it aborts still arrives (the filter is a separate process)."""
  import os
  import subprocess
  code = (
      "import os, tensorflow as tf\n"
      "from flip import cli\n"
      "def main(argv):\n"
      "  try:\n"
      "    tf.io.decode_image(b'\\xff\\xd8\\xff\\xe0' + bytes(range(256)) * 4, channels=3)\n"
      "  except tf.errors.InvalidArgumentError:\n"
      "    print('decode failed as expected', file=sys.stderr, flush=True)\n"
      "  os.write(2, b'last words before the abort\\n')\n"
      "  os.abort()\n"
      "import sys\n"
      "cli.run(main, join=False, huge_pages=False)\n")
  env = {k: v for k, v in os.environ.items() if k != "FLIP_RAW_STDERR"}
  result = subprocess.run([*forkserver.python(), "-c", code], capture_output=True, env=env,
                          timeout=120)
  assert result.returncode == -6  # SIGABRT
  assert b"decode failed as expected" in result.stderr
  assert b"last words before the abort" in result.stderr
  assert b"Improper call to JPEG library" not in result.stderr, result.stderr[-2000:]
  # FLIP_RAW_STDERR=1: the raw stream, libjpeg's line included.
  raw = subprocess.run([*forkserver.python(), "-c", code], capture_output=True,
                       env=dict(env, FLIP_RAW_STDERR="1"), timeout=120)
  assert b"Improper call to JPEG library" in raw.stderr



ENTRY_POINTS = ["flip.main", "flip.evaluate", "flip.benchmark_suite"] + sorted(
    f"tools/{f}" for f in os.listdir(os.path.join(ROOT, "tools"))
    if f.endswith(".py"))

# Runs the entry point sys.argv[1] until it restarts itself (os.execve stubbed) and prints the
# heavy modules loaded by then.
_RESTART_CHECK = """
import os, runpy, sys
from flip import hostmem
hostmem.wanted, hostmem.active = lambda: True, lambda: False  # a restart is due on any machine

class Restarted(Exception):
  pass

def execve(*args):
  raise Restarted(sorted(m for m in ("jax", "tensorflow", "torch") if m in sys.modules))

os.execve = execve
entry = sys.argv[1]
sys.argv = [entry, "--helpshort"]
try:
  if entry.endswith(".py"):
    sys.path.insert(0, os.path.dirname(entry))
    runpy.run_path(entry, run_name="__main__")
  else:
    runpy.run_module(entry, run_name="__main__", alter_sys=True)
  print("LOADED no restart")
except Restarted as e:
  print("LOADED", e.args[0])
"""


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_points_restart_before_loading_jax_or_tensorflow(entry):
  """Every entry point restarts itself (glibc huge pages, flip/hostmem.py) before it imports
  JAX, TensorFlow or torch: the restarted process imports them again, so a late restart costs
  the whole start-up twice (measured: 4.5-5.5 s more per tool launch on a 2-core AMD EPYC)."""
  import subprocess
  import sys
  result = subprocess.run([sys.executable, "-c", _RESTART_CHECK, entry], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split("LOADED", 1)[1].strip() == "[]"
