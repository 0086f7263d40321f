"""The tests' `python ...` subprocesses, forked from a process that has imported the libraries.

Most end-to-end tests start the entry points and tools as subprocesses, and every such Python
spends 6-7 s of CPU importing TensorFlow, JAX and the rest before it does anything (a third of
the whole suite's CPU on a 2-core machine), and a second or two more tearing them down at exit.
`python()` is the command prefix to use instead of `sys.executable`: a small stub
(`env --block-signal=... python -I -S -c STUB SOCKET ARGS...`, tens of milliseconds) that asks
this pytest worker's server to fork a copy of itself, made after those imports and before
anything starts a thread pool or a JAX backend, and to run `python ARGS...` in it. The stub is
what subprocess sees: the program has the stub's stdin, stdout and stderr, the signals sent to
the stub are passed on to it, and the stub ends with the program's exit status (a program
killed by a signal kills the stub with the same signal; a killed stub takes its program along).
`pid_of(popen)` is the program's own process id. The program ends as Python ends one (its
exception printed, its threads joined, its atexit functions run), but without tearing down the
modules.

A program runs in a plain new Python instead (the stub execs `sys.executable ARGS...`) where a
fork could differ from it: interpreter options before the program (`python -X ... -m ...`), an
environment that changes what the libraries read at import (JAX_*, TF_*, PYTHON*, locale, ...),
another mount or other namespace (`unshare -m sh -c "mount ...; python ..."`) or other resource
limits (`ulimit`), or no server (it failed to start, or FLIP_TEST_FORKSERVER=0 in the tests'
environment). Nor does a program that loads torch belong in the fork: triton, which torch
imports, crashes the process when it loads beside the libraries the server has imported.
"""

from __future__ import annotations

import atexit
import functools
import gc
import json
import os
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

ENV_OFF = "FLIP_TEST_FORKSERVER"  # "0": no server, every program in a new Python
# A directory for the servers' logs (one line per program: forked or not, CPU seconds).
ENV_LOG = "FLIP_TEST_FORKSERVER_LOG"
STUB = os.path.abspath(__file__)

# Read by the interpreter, the C libraries or the Python libraries when they start or are
# imported: a program whose environment changes one of them runs in a new Python.
IMPORT_TIME_PREFIXES = ("PYTHON", "LD_", "GLIBC_", "MALLOC_", "OMP_", "OPENBLAS", "MKL_", "TF_",
                        "TFDS_", "KERAS", "JAX_", "CUDA", "NVIDIA", "LC_")
IMPORT_TIME_KEYS = frozenset({"LANG", "LANGUAGE", "HOME", "TMPDIR", "TEMP", "TMP", "TZ"})
# ... except those read later (flip.distributed's, jax.distributed.initialize's) or set again
# in the fork (_become).
NOT_AT_IMPORT = frozenset({"JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                           "JAX_PLATFORMS", "TFDS_DATA_DIR"})
NAMESPACES = ("mnt", "pid", "net", "uts", "ipc", "user", "cgroup")
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
           signal.SIGUSR2)

_server: subprocess.Popen | None = None
_socket = ""  # the path of this process's server's socket


def python() -> list[str]:
  """The command prefix that runs `python ARGS...` (see the module docstring); starts this
  process's server on first use."""
  global _server, _socket
  if os.environ.get(ENV_OFF) == "0":
    return [sys.executable]
  if _server is None:
    directory = tempfile.mkdtemp(prefix="flip-fork-")
    _socket = os.path.join(directory, "socket")
    logs = os.environ.get(ENV_LOG) or directory
    os.makedirs(logs, exist_ok=True)
    with open(os.path.join(logs, f"forkserver-{os.getpid()}.log"), "w") as log:
      _server = subprocess.Popen([sys.executable, STUB, "--serve", _socket],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    atexit.register(_stop_server, directory)
    deadline = time.time() + 60
    while not os.path.exists(_socket) and _server.poll() is None and time.time() < deadline:
      time.sleep(0.01)  # it listens before its imports: the stubs wait in its queue
  return [*_blocked(), sys.executable, "-I", "-S", "-c", _STUB_CODE, _socket]


@functools.cache
def _blocked() -> tuple[str, ...]:
  """`env --block-signal=...` (GNU coreutils 8.31 and later), which starts the stub with SIGNALS
  already blocked: CPython loses a SIGINT that arrives during its own start-up, before the
  stub's first statement (Python's handler raises KeyboardInterrupt inside a weak reference
  callback of the import system, which prints "Exception ignored in: ... _get_module_lock" and
  goes on: 2 of 300 plain `python -c` starts, SIGINTs 0-60 ms after the start on a busy 2-core
  machine). () where env cannot: the stub's first statement blocks them then."""
  env = shutil.which("env")
  names = ",".join(signum.name[3:] for signum in SIGNALS)
  works = env is not None and subprocess.run(
      [env, f"--block-signal={names}", "true"], capture_output=True).returncode == 0
  return (env, f"--block-signal={names}") if works else ()


def pid_of(popen: subprocess.Popen) -> int:
  """The process id of the program that `popen` (a Popen of `python() + ARGS`) runs."""
  try:
    with open(os.path.join(_pids_dir(_socket), str(popen.pid))) as f:
      return int(f.read())
  except (OSError, ValueError):
    return popen.pid  # ran in a new Python: the stub exec'd it


def _pids_dir(socket_path: str) -> str:
  """Where the server writes each program's process id under its stub's (pid_of reads it)."""
  return os.path.join(os.path.dirname(socket_path), "pids")


def _stop_server(directory: str) -> None:
  if _server is not None and _server.poll() is None:
    _server.terminate()
    _server.wait(10)
  shutil.rmtree(directory, ignore_errors=True)


# The stub: asks the server to run `python ARGS...`, or execs it. It starts with the signals it
# passes on blocked (_blocked; else its first statement blocks them), and they stay blocked for
# its whole life: each waits in the kernel until the stub takes it (sigtimedwait) and sends it
# on. No handler of the stub's catches one, so no step of the interpreter can drop one.
_STUB_CODE = (
    "import _signal as s; s.pthread_sigmask(s.SIG_BLOCK, {%s}); import sys; "
    "sys.path.insert(0, %r); import forkserver; forkserver._stub(sys.argv[1], sys.argv[2:])" % (
        ", ".join(f"s.{signum.name}" for signum in SIGNALS), os.path.dirname(STUB)))
FORWARD_POLL_S = 0.01  # how often the stub looks for signals to pass on while its program runs


def _recv_line(sock: socket.socket, pending: bytearray) -> dict | None:
  while b"\n" not in pending:
    chunk = sock.recv(4096)
    if not chunk:
      return None
    pending += chunk
  line, _, rest = bytes(pending).partition(b"\n")
  pending[:] = rest
  return json.loads(line)


def _stub(path: str, args: list[str]) -> None:
  """Asks the server to run `python ARGS...` (SIGNALS blocked since the stub started)."""
  fallback = [sys.executable, *args]
  if not args or args[0].startswith("-") and args[0] not in ("-m", "-c"):
    _exec(fallback)
  try:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    request = json.dumps({"args": args, "env": dict(os.environ), "cwd": os.getcwd(),
                          "stub": os.getpid(), "umask": _umask(), **_process()}).encode()
    fds = [fd for fd in (0, 1, 2) if _is_open(fd)]
    socket.send_fds(sock, [struct.pack("!I", len(request))], fds)
    sock.sendall(struct.pack("!3b", *((fd in fds) for fd in (0, 1, 2))) + request)
    pending = bytearray()
    reply = _recv_line(sock, pending)
  except OSError:
    reply = None
  if reply is None or "fallback" in reply:
    _exec(fallback)
  child = reply["pid"]
  while not pending and not select.select([sock], [], [], FORWARD_POLL_S)[0]:
    while (info := signal.sigtimedwait(SIGNALS, 0)) is not None:  # those sent so far, in turn
      os.kill(child, info.si_signo)
  reply = _recv_line(sock, pending)
  if reply is None:
    os.kill(child, signal.SIGKILL)
    sys.stderr.write("forkserver: the server ended before the program\n")
    os._exit(1)
  returncode = reply["returncode"]
  if returncode < 0:  # killed by a signal: so is the stub
    signal.signal(-returncode, signal.SIG_DFL)
    os.kill(os.getpid(), -returncode)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {-returncode})
  os._exit(returncode)


def _exec(argv: list[str]) -> None:
  """Execs a new Python; a signal sent so far does first what it would have done to a Python
  that had not started yet (ends the stub)."""
  for signum in SIGNALS:
    signal.signal(signum, signal.SIG_DFL)
  signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
  os.execv(argv[0], argv)


def _umask() -> int:
  mask = os.umask(0o22)
  os.umask(mask)
  return mask


def _process() -> dict:
  """What of a process's surroundings a fork does not take over from the stub."""
  namespaces = {}
  for name in NAMESPACES:
    try:
      namespaces[name] = os.readlink(f"/proc/self/ns/{name}")
    except OSError:
      pass
  return {"namespaces": namespaces,
          "rlimits": {name: resource.getrlimit(getattr(resource, name))
                      for name in sorted(dir(resource)) if name.startswith("RLIMIT_")}}


def _is_open(fd: int) -> bool:
  try:
    os.fstat(fd)
    return True
  except OSError:
    return False


# The server.

PRELOAD = ("numpy", "PIL.Image", "tensorflow", "tensorflow_text", "tensorflow_datasets", "jax",
           "jax.numpy", "flax.linen", "flax.training.train_state", "optax", "orbax.checkpoint",
           "clu.metric_writers", "clu.periodic_actions", "ml_collections.config_flags",
           "absl.app", "einops")


def _serve(path: str) -> dict:
  """Serves until its parent ends; returns the request in each forked child."""
  listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  listener.bind(path)
  listener.listen(64)  # the stubs wait while the imports run
  import importlib  # pylint: disable=import-outside-toplevel
  import logging  # pylint: disable=import-outside-toplevel
  for name in PRELOAD:
    importlib.import_module(name)
  # orbax logs at import, and Python's logging gives the root logger a stderr handler on the
  # first record it meets without one; a program that installs its own (absl's) before that
  # import would print each line twice in the fork.
  logging.root.handlers.clear()
  # The preloaded modules' ~500,000 objects, frozen: a full collection in a forked program skips
  # them (a 6-step :local run's collections took 0.19 s instead of 0.5) and leaves their memory
  # pages shared with the server instead of writing to them.
  gc.collect()
  gc.freeze()
  threads = sorted(open(f"/proc/self/task/{t}/comm").read().strip()
                   for t in os.listdir("/proc/self/task"))
  if any(name != "python" for name in threads):  # a thread pool a fork would lose
    print(f"forkserver: not serving, threads {threads} started at import", flush=True)
    return _refuse(listener)
  os.makedirs(_pids_dir(path), exist_ok=True)
  base_env = dict(os.environ)
  base_process = json.loads(json.dumps(_process()))  # as the stubs send it
  parent = os.getppid()
  running: dict[socket.socket, tuple[int, str]] = {}
  while os.getppid() == parent:
    ready, _, _ = select.select([listener, *running], [], [], 0.1)
    for conn in ready:
      if conn is listener:
        job = _accept(listener, running, base_env, base_process, path)
        if job is not None:
          return job
      elif not _recv_or_hangup(conn):  # the stub was killed: so is its program
        pid, what = running.pop(conn)
        _kill(pid)
        conn.close()
        _log(f"killed with its stub: {what}")
    for conn, (pid, what) in list(running.items()):
      done, status, usage = os.wait4(pid, os.WNOHANG)
      if done:
        returncode = os.waitstatus_to_exitcode(status)
        _send(conn, {"returncode": returncode})
        conn.close()
        del running[conn]
        _log(f"forked, exit {returncode}, {usage.ru_utime + usage.ru_stime:.1f} s CPU: {what}")
  for pid, _ in running.values():
    _kill(pid)
  sys.exit(0)


def _log(line: str) -> None:
  print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


def _refuse(listener):
  while True:  # until the pytest worker stops it: each stub execs a new Python
    conn, _ = listener.accept()
    _send(conn, {"fallback": "no server"})
    conn.close()


def _recv_or_hangup(conn: socket.socket) -> bytes:
  try:
    return conn.recv(1)
  except OSError:
    return b""


def _kill(pid: int) -> None:
  try:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
  except OSError:
    pass


def _send(conn: socket.socket, message: dict) -> None:
  try:
    conn.sendall(json.dumps(message).encode() + b"\n")
  except OSError:
    pass


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
  data = b""
  while len(data) < n:
    chunk = conn.recv(n - len(data))
    if not chunk:
      raise OSError("the stub hung up")
    data += chunk
  return data


def _accept(listener, running, base_env, base_process, path):
  """Reads one request and forks its program; returns the request in the child."""
  conn, _ = listener.accept()
  conn.settimeout(10)  # a stub stopped halfway through its request holds up no other program
  fds = []
  try:
    header, fds, _, _ = socket.recv_fds(conn, 4, 3)
    present = struct.unpack("!3b", _recv_exactly(conn, 3))
    request = json.loads(_recv_exactly(conn, struct.unpack("!I", header)[0]))
    conn.settimeout(None)
  except (OSError, ValueError, struct.error):
    for fd in fds:
      os.close(fd)
    conn.close()
    return None
  env = request["env"]
  changed = sorted(k for k in set(env) | set(base_env)
                   if env.get(k) != base_env.get(k) and k not in NOT_AT_IMPORT and
                   (k.startswith(IMPORT_TIME_PREFIXES) or k in IMPORT_TIME_KEYS))
  changed += [key for key, value in base_process.items() if request[key] != value]
  what = f"{' '.join(request['args'])[:150]!r} in {env.get('PYTEST_CURRENT_TEST', '?')}"
  if changed:
    _send(conn, {"fallback": f"changed: {changed}"})
    _log(f"a new Python (changed: {changed}): {what}")
    for fd in fds:
      os.close(fd)
    conn.close()
    return None
  # A signal the stub passes on before the child's Python has taken over from the fork
  # (PyOS_AfterFork_Child clears the ones it caught) or before the program starts waits in the
  # kernel until _run lets it through.
  signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
  pid = os.fork()
  if pid == 0:
    listener.close()
    conn.close()
    for other in running:
      other.close()
    targets = [fd for fd, there in zip((0, 1, 2), present) if there]
    for fd, target in zip(fds, targets):
      os.dup2(fd, target)
    for fd in fds:
      if fd not in targets:
        os.close(fd)
    for target in {0, 1, 2} - set(targets):
      os.close(target)
    # The program's pid for pid_of, written (atomically) before the program can print anything.
    pid_file = os.path.join(_pids_dir(path), str(request["stub"]))
    with open(f"{pid_file}.tmp", "w") as f:
      f.write(str(os.getpid()))
    os.replace(f"{pid_file}.tmp", pid_file)
    return request
  signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
  for fd in fds:
    os.close(fd)
  running[conn] = pid, what
  _send(conn, {"pid": pid})
  return None


def _become(request: dict):
  """In the forked child: the state a new `python ARGS...` would start in; returns the program."""
  import io  # pylint: disable=import-outside-toplevel
  import runpy  # pylint: disable=import-outside-toplevel
  import types  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  os.environ.clear()
  os.environ.update(request["env"])
  import jax  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.core import constants  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_platforms", os.environ.get("JAX_PLATFORMS") or None)
  constants.DATA_DIR = constants.get_default_data_dir()
  os.chdir(request["cwd"])
  os.umask(request["umask"])
  np.random.seed()  # the legacy global generator, seeded afresh as at import

  def stream(fd, write):
    raw = io.FileIO(fd, "w" if write else "r", closefd=False)
    if not write:
      return io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8")
    return io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8",
                            errors="backslashreplace" if fd == 2 else "strict",
                            line_buffering=fd == 2 or os.isatty(fd))

  sys.stdin = sys.__stdin__ = stream(0, False) if _is_open(0) else None
  sys.stdout = sys.__stdout__ = stream(1, True) if _is_open(1) else None
  sys.stderr = sys.__stderr__ = stream(2, True) if _is_open(2) else None
  args = request["args"]
  sys.orig_argv = [sys.executable, *args]
  if args[0] == "-m":
    sys.argv = [args[1], *args[2:]]
    sys.path[0] = os.getcwd()
    return lambda: runpy.run_module(args[1], run_name="__main__", alter_sys=True)
  if args[0] == "-c":
    sys.argv = ["-c", *args[2:]]
    sys.path[0] = ""
    main = sys.modules["__main__"] = types.ModuleType("__main__")
    code = compile(args[1], "<string>", "exec")
    return lambda: exec(code, vars(main))  # pylint: disable=exec-used
  sys.argv = list(args)
  sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
  return lambda: runpy.run_path(args[0], run_name="__main__")


def _run(program) -> None:
  """Runs the program and ends as the interpreter would (its uncaught exception printed, its
  exit status, its threads joined, its atexit functions run, the standard streams flushed), but
  without tearing down the server's modules: a second or two of CPU per program, and destructors
  that could wait for threads of the server that a fork does not have."""
  import threading  # pylint: disable=import-outside-toplevel
  status, interrupted = 0, False
  try:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)  # those sent since the fork arrive now
    program()
  except SystemExit as e:
    if e.code is None:
      status = 0
    elif isinstance(e.code, int):
      status = e.code & 0xFF
    else:
      print(e.code, file=sys.stderr)
      status = 1
  except BaseException as e:  # pylint: disable=broad-exception-caught
    sys.excepthook(type(e), e, e.__traceback__)
    status, interrupted = 1, isinstance(e, KeyboardInterrupt)
  try:
    threading._shutdown()  # pylint: disable=protected-access
    atexit._run_exitfuncs()  # pylint: disable=protected-access
    for stream in (sys.stdout, sys.stderr):
      if stream is not None:
        stream.flush()
  finally:
    if interrupted:  # as Python ends after a KeyboardInterrupt: killed by SIGINT
      signal.signal(signal.SIGINT, signal.SIG_DFL)
      os.kill(os.getpid(), signal.SIGINT)
    os._exit(status)


if __name__ == "__main__":  # the server: python forkserver.py --serve SOCKET
  _run(_become(_serve(sys.argv[2])))  # in each forked child
