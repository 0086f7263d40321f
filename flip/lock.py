"""One run per workdir: a lock file, `<workdir>/run.lock`, held by process 0 for the whole run.

The lock records who holds it (host, pid, start time, command) and a heartbeat that a background
thread renews every HEARTBEAT_SECONDS. A second run on the same workdir refuses to start, naming
the holder, before it touches anything there (two runs would delete each other's in-flight
checkpoints and interleave their saves). A lock left by a run that is gone (killed with SIGKILL,
a lost VM) is taken over with a warning: on the same host when its process no longer exists, on
any host when its heartbeat is older than STALE_SECONDS. A run that ends, also with an error or
a signal, removes its lock.

On a local or network file system the lock is created atomically (O_EXCL); on object stores
(gs://) it is written and read back, which keeps out a second run started seconds later but not
one started in the same instant.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import threading
import time
import uuid

import jax
from absl import logging
from etils import epath

from flip import distributed
from flip import errors

LOCK_NAME = "run.lock"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _age_seconds(stamp: str) -> float:
  try:
    then = datetime.datetime.fromisoformat(stamp)
  except (TypeError, ValueError):
    return float("inf")
  return (datetime.datetime.now(datetime.timezone.utc) - then).total_seconds()


def _process_exists(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # it exists, as another user's process
    return True
  return True


def describe(holder: dict) -> str:
  return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started "
          f"{holder.get('started', '?')}, last heartbeat {holder.get('heartbeat', '?')}")


def stale_reason(holder: dict) -> str | None:
  """Why a lock's holder is gone (None if it may still be running)."""
  if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
    if not _process_exists(holder["pid"]):
      return f"its process {holder['pid']} no longer exists on this host"
    return None
  age = _age_seconds(holder.get("heartbeat", ""))
  if age > STALE_SECONDS:
    return f"its heartbeat is {age:.0f}s old (a running holder renews it every " \
           f"{HEARTBEAT_SECONDS:.0f}s)"
  return None


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds the workdir's lock (process 0) for the block.

  A collective with several processes: all enter it, and all raise errors.WorkdirLockedError
  when process 0 could not take the lock.
  """

  def __init__(self, workdir: str):
    self.path = epath.Path(workdir) / LOCK_NAME
    self.token = uuid.uuid4().hex
    self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": _now(),
                   "heartbeat": _now(), "command": " ".join(sys.argv), "token": self.token}
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._held = False

  # -- process 0 -------------------------------------------------------------------------------

  def _read(self) -> dict | None:
    """The current lock's content; {} if unreadable, None if there is no lock."""
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}

  def _create(self) -> bool:
    """Creates the lock if there is none; whether this run now holds it."""
    text = json.dumps(self.holder)
    if self.path.exists():
      return False
    if "://" not in str(self.path):  # a file system: atomic
      try:
        fd = os.open(str(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, "w") as f:
        f.write(text)
      return True
    self.path.write_text(text)  # object stores: written, then read back
    time.sleep(1.0)
    return (self._read() or {}).get("token") == self.token

  def _acquire(self) -> None:
    try:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      for _ in range(3):
        if self._create():
          self._held = True
          return
        holder = self._read()
        if holder is None:
          continue  # released meanwhile: try again
        if holder == {}:  # unreadable: a holder mid-write, or a broken file
          age = time.time() - self.path.stat().mtime
          reason = f"it is unreadable and {age:.0f}s old" if age > STALE_SECONDS else None
        else:
          reason = stale_reason(holder)
        if reason is None:
          raise errors.WorkdirLockedError(
              f"{self.path.parent} is in use by another run ({describe(holder)}"
              f"{'; command: ' + holder['command'] if holder.get('command') else ''}). "
              "Wait for it to end or stop it, or choose another --workdir. If that run is gone, "
              f"delete {self.path} (a lock on another host goes stale {STALE_SECONDS:.0f}s "
              "after its last heartbeat).")
        logging.warning("Taking over the lock %s of an earlier run (%s): %s.", self.path,
                        describe(holder), reason)
        self.path.unlink(missing_ok=True)
    except OSError as e:
      raise errors.NotWritableError(
          f"Cannot write to --workdir={self.path.parent} ({e}); choose a directory you can "
          "write to.") from e
    raise errors.WorkdirLockedError(f"Could not take the lock {self.path}: other runs keep "
                                    "taking it; make sure only one run uses this workdir.")

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      try:
        current = self._read()
        if current is not None and current.get("token") != self.token:
          logging.warning("The lock %s was taken over by another run (%s): this run no longer "
                          "holds its workdir.", self.path, describe(current))
          return
        self.holder["heartbeat"] = _now()
        tmp = self.path.parent / f".{LOCK_NAME}.{self.token}"
        tmp.write_text(json.dumps(self.holder))
        tmp.replace(self.path)
      except OSError as e:  # a full disk or a lost mount: the run itself will notice
        logging.warning("Could not renew the lock %s: %s", self.path, e)

  # -- every process ---------------------------------------------------------------------------

  def __enter__(self) -> "WorkdirLock":
    error = None
    if jax.process_index() == 0:
      try:
        self._acquire()
      except errors.FlipError as e:
        error = e
    if not distributed.process_flags(error is None)[0] and error is None:
      error = errors.WorkdirLockedError(
          f"Process 0 could not take the lock {self.path} (its error says why).")
    if error is not None:
      raise error
    if self._held:
      self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
      self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    if not self._held:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    try:
      if (self._read() or {}).get("token") == self.token:
        self.path.unlink(missing_ok=True)
    except OSError as e:
      logging.warning("Could not remove the lock %s: %s", self.path, e)
    self._held = False
