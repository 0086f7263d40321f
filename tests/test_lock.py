"""One run per workdir (flip/lock.py): refused while held, stale locks taken over, released."""

import datetime
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from flip import errors
from flip import lock


def write_lock(workdir, **fields):
  holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": lock._now(),
            "heartbeat": lock._now(), "command": "python -m flip.main --workdir=x",
            "token": "other"}
  holder.update(fields)
  (workdir / lock.LOCK_NAME).write_text(json.dumps(holder))
  return holder


def ago(seconds):
  return (datetime.datetime.now(datetime.timezone.utc)
          - datetime.timedelta(seconds=seconds)).isoformat(timespec="seconds")


@pytest.fixture
def live_pid():
  proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  yield proc.pid
  proc.kill()
  proc.wait()


def dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_lock_is_held_for_the_block_and_removed_after(tmp_path):
  workdir = tmp_path / "run"
  with lock.WorkdirLock(str(workdir)) as held:
    holder = json.loads((workdir / lock.LOCK_NAME).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert holder["token"] == held.token and holder["started"]
    with pytest.raises(errors.WorkdirLockedError):  # a second one, even in this process
      with lock.WorkdirLock(str(workdir)):
        pass
  assert not (workdir / lock.LOCK_NAME).exists()
  with pytest.raises(RuntimeError):  # the lock is released also when the block fails
    with lock.WorkdirLock(str(workdir)):
      raise RuntimeError("boom")
  assert not (workdir / lock.LOCK_NAME).exists()


def test_a_live_holder_is_named_and_refused(tmp_path, live_pid):
  holder = write_lock(tmp_path, pid=live_pid, started="2026-12-01T10:00:00+00:00")
  with pytest.raises(errors.WorkdirLockedError) as e:
    with lock.WorkdirLock(str(tmp_path)):
      pass
  message = str(e.value)
  for part in (f"host {socket.gethostname()}", f"pid {live_pid}",
               "started 2026-12-01T10:00:00+00:00", holder["command"], "--workdir"):
    assert part in message, message
  assert json.loads((tmp_path / lock.LOCK_NAME).read_text()) == holder  # untouched


@pytest.mark.parametrize("case", ["dead_pid", "old_heartbeat_other_host", "old_unreadable"])
def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, case, caplog):
  if case == "dead_pid":
    write_lock(tmp_path, pid=dead_pid())
  elif case == "old_heartbeat_other_host":
    write_lock(tmp_path, host="another-host", heartbeat=ago(lock.STALE_SECONDS + 60))
  else:
    path = tmp_path / lock.LOCK_NAME
    path.write_text("{not json")
    old = time.time() - lock.STALE_SECONDS - 60
    os.utime(path, (old, old))
  with caplog.at_level("WARNING"):
    with lock.WorkdirLock(str(tmp_path)) as held:
      assert json.loads((tmp_path / lock.LOCK_NAME).read_text())["token"] == held.token
  assert any("Taking over the lock" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("case", ["fresh_heartbeat_other_host", "fresh_unreadable"])
def test_a_lock_that_may_be_alive_is_refused(tmp_path, case):
  if case == "fresh_heartbeat_other_host":
    write_lock(tmp_path, host="another-host", heartbeat=ago(10))
  else:
    (tmp_path / lock.LOCK_NAME).write_text("")  # a holder in the middle of writing it
  with pytest.raises(errors.WorkdirLockedError, match="in use by another run"):
    with lock.WorkdirLock(str(tmp_path)):
      pass


def test_heartbeat_is_renewed_and_a_taken_lock_is_not_removed(tmp_path, monkeypatch):
  monkeypatch.setattr(lock, "HEARTBEAT_SECONDS", 0.05)
  with lock.WorkdirLock(str(tmp_path)):
    first = json.loads((tmp_path / lock.LOCK_NAME).read_text())["heartbeat"]
    deadline = time.time() + 5
    while time.time() < deadline:
      time.sleep(0.1)
      if json.loads((tmp_path / lock.LOCK_NAME).read_text())["heartbeat"] != first:
        break
    else:
      pytest.fail("the heartbeat was not renewed")
  # Taken over meanwhile by another run (this one was thought gone): its lock stays.
  monkeypatch.setattr(lock, "HEARTBEAT_SECONDS", 60)
  with lock.WorkdirLock(str(tmp_path)):
    other = write_lock(tmp_path, token="the-new-holder")
  assert json.loads((tmp_path / lock.LOCK_NAME).read_text()) == other


def test_an_unwritable_workdir_is_one_clear_error(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(errors.NotWritableError, match="--workdir"):
    with lock.WorkdirLock(str(blocker / "run")):
      pass


def test_a_second_run_refuses_before_touching_the_workdir(shapes_data_dir, tmp_path, live_pid):
  """The first run's in-flight checkpoint (orbax's temporary directory) survives the second
  run's start; nothing is written."""
  from flip import train
  from test_train import local_config
  workdir = tmp_path / "run"
  in_flight = workdir / "checkpoints" / "500.orbax-checkpoint-tmp-1764700000"
  in_flight.mkdir(parents=True)
  (in_flight / "part").write_text("being written by the first run")
  write_lock(workdir, pid=live_pid)
  before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
  with pytest.raises(errors.WorkdirLockedError, match=f"pid {live_pid}"):
    train.train_and_evaluate(local_config(shapes_data_dir, evals={}), str(workdir))
  assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == before
