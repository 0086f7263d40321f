"""The tests' fork server runs `python ARGS...` as a new Python would (tests/forkserver.py)."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

import forkserver

pytestmark = pytest.mark.skipif(os.environ.get(forkserver.ENV_OFF) == "0",
                                reason="FLIP_TEST_FORKSERVER=0: no fork server")

# What a program can see of how it was started; "forked": the libraries were imported before it.
REPORT = """
import json, logging, os, sys
print(json.dumps({"argv": sys.argv, "path0": sys.path[0], "cwd": os.getcwd(), "name": __name__,
                  "stdin": sys.stdin.read(), "env": os.environ.get("FLIP_TEST_VALUE"),
                  "root_handlers": len(logging.root.handlers),
                  "forked": "tensorflow" in sys.modules}))
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


def run(prefix, args, **kwargs):
  return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120, **kwargs)


def test_runs_code_modules_and_scripts_as_a_new_python_would(tmp_path):
  script = tmp_path / "report.py"
  script.write_text(REPORT)
  (tmp_path / "report_module.py").write_text(REPORT)
  env = dict(os.environ, FLIP_TEST_VALUE="seen")
  for args in (["-c", REPORT, "3"], [str(script), "4"], ["-m", "report_module", "5"]):
    want = run([sys.executable], args, cwd=tmp_path, env=env, input="in")
    got = run(forkserver.python(), args, cwd=tmp_path, env=env, input="in")
    assert got.returncode == want.returncode == int(args[-1]), got.stderr[-2000:]
    assert got.stderr.endswith("to stderr\n")
    want, got = json.loads(want.stdout), json.loads(got.stdout)
    assert got.pop("forked") and not want.pop("forked")  # the fork was used
    if args[0] == "-m":  # the module's file: the same, seen from /tmp or not
      assert os.path.samefile(got.pop("argv")[0], want.pop("argv")[0])
    assert got == want


def test_uncaught_exceptions_and_jax_settings_from_the_environment():
  got = run(forkserver.python(), ["-c", "raise ValueError('boom')"])
  assert got.returncode == 1 and got.stderr.strip().splitlines()[-1] == "ValueError: boom"
  code = ("import jax, sys, tensorflow_datasets as tfds\n"
          "print(jax.device_count(), jax.default_backend(), tfds.core.constants.DATA_DIR,\n"
          "      'optax' in sys.modules)")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=3",
             JAX_PLATFORMS="cpu", TFDS_DATA_DIR="/nowhere")
  got = run(forkserver.python(), ["-c", code], env=env)
  assert got.returncode == 0, got.stderr[-2000:]
  assert got.stdout.split() == ["3", "cpu", "/nowhere", "True"]  # forked


def test_an_environment_read_at_import_or_other_limits_get_a_new_python():
  code = "import sys; print('tensorflow' in sys.modules)"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="1")
  got = run(forkserver.python(), ["-c", code], env=env)
  assert got.returncode == 0 and got.stdout.strip() == "False"
  command = " ".join(shlex.quote(arg) for arg in [*forkserver.python(), "-c", code])
  got = run(["sh", "-c", f"ulimit -n 100 && exec {command}"], [])
  assert got.returncode == 0 and got.stdout.strip() == "False", got.stderr


def test_signals_reach_the_program_and_a_killed_stub_takes_it_along():
  code = ("import signal, sys, time\n"
          "signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\n"
          "print('ready', flush=True)\n"
          "time.sleep(60)\n")
  proc = subprocess.Popen([*forkserver.python(), "-c", code], stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline() == "ready\n"
  assert forkserver.pid_of(proc) != proc.pid  # forked, not exec'd
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(30) == 143

  proc = subprocess.Popen([*forkserver.python(), "-c", code.replace("sys.exit(143)", "0")],
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline() == "ready\n"
  program = forkserver.pid_of(proc)
  proc.kill()
  proc.wait(30)
  deadline = time.time() + 30
  while os.path.exists(f"/proc/{program}") and time.time() < deadline:
    time.sleep(0.1)
  assert not os.path.exists(f"/proc/{program}")

  proc = subprocess.Popen([*forkserver.python(), "-c", "import time; time.sleep(60)"])
  time.sleep(1)
  proc.send_signal(signal.SIGINT)  # Python's own handler: KeyboardInterrupt, then ends by SIGINT
  assert proc.wait(30) == -signal.SIGINT


def signal_state(pid: int) -> dict[str, str]:
  """A process's signal masks (pending, blocked, caught, ignored) and threads, for a failure."""
  try:
    with open(f"/proc/{pid}/status") as f:
      return dict(line.split(":\t", 1) for line in f.read().splitlines()
                  if line.startswith(("Sig", "ShdPnd", "Threads", "State")))
  except OSError as e:
    return {"error": str(e)}


def test_a_signal_sent_while_the_program_starts_is_not_lost(tmp_path):
  """Sent while the stub starts (blocked from its exec on), while the server forks (blocked in
  the child until the program runs) or while the program is set up, a SIGTERM ends the program
  at once: none is lost (a 60 s sleep). The delays sweep the time a program takes to start,
  measured first (it varies with the load).

  SIGTERM, whose default action the kernel carries out: a SIGINT becomes Python's
  KeyboardInterrupt, which CPython itself drops when it is raised inside a weak reference
  callback or a finalizer ("Exception ignored in: ..."), as in its own start-up: 2 of 300 plain
  `python -c` programs sent a SIGINT 0-60 ms after their start kept running (AMD EPYC, 2 cores,
  two busy processes beside them), and 1 of 360 forked programs of a stress run of this sweep. A
  SIGINT a second after the start:
  test_signals_reach_the_program_and_a_killed_stub_takes_it_along."""
  starts = []
  for _ in range(3):
    began = time.perf_counter()
    proc = subprocess.Popen([*forkserver.python(), "-c", "print('ready', flush=True)"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    starts.append(time.perf_counter() - began)
    assert proc.wait(30) == 0
  start = sorted(starts)[1]
  for step in range(12):
    delay = start * (0.05 + 0.09 * step)
    with open(tmp_path / f"stderr_{step}", "w+") as stderr:
      proc = subprocess.Popen([*forkserver.python(), "-c", "import time; time.sleep(60)"],
                              stderr=stderr)
      time.sleep(delay)
      proc.send_signal(signal.SIGTERM)
      try:
        returncode = proc.wait(30)
      except subprocess.TimeoutExpired:
        state = {"stub": signal_state(proc.pid), "program": signal_state(forkserver.pid_of(proc))}
        proc.kill()
        proc.wait()
        stderr.seek(0)
        pytest.fail(f"lost: a SIGTERM sent {delay:.3f} s after the start (a start takes "
                    f"{start:.3f} s); /proc/PID/status: {state}; stderr: {stderr.read()[-1000:]}")
    assert returncode == -signal.SIGTERM, (returncode, delay)
