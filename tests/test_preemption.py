"""SIGTERM/SIGINT stop a run with a checkpoint it resumes from exactly (flip/preemption.py)."""

import json
import os
import signal
import subprocess
import threading
import time

import jax
import numpy as np
import pytest

import forkserver
import shard_fixtures as fx
from flip import errors
from flip import lock
from flip import train
from flip.data import pipeline
from test_train import ROOT, broken_wds_shards, final_params, local_config

pytestmark = pytest.mark.slow  # training loops and subprocess runs of flip.main


def signal_at_batch(monkeypatch, signum, batch):
  """Makes the training loop's input send `signum` to this process as it hands out its
  `batch`-th batch (so the signal arrives during that step)."""
  real = pipeline.prefetch_to_device

  def prefetch(*args, **kwargs):
    for i, item in enumerate(real(*args, **kwargs), start=1):
      if i == batch:
        signal.raise_signal(signum)
      yield item

  monkeypatch.setattr(pipeline, "prefetch_to_device", prefetch)


# 12 steps of 32 over shards of 120 good records and 5 broken ones: three epochs and more.
STRAIGHT_RUN = {"total_steps": 12, "checkpoint_every_steps": 4, "evals": {}, "log_every_steps": 1}


def test_stopped_by_config_and_signals_the_resumed_run_is_exact(shapes_data_dir, tmp_path,
                                                                monkeypatch):
  """One run stopped three times on shards with broken records (the 12 steps span three epochs):
  by config.stop_at_step after step 6, by SIGTERM during step 8 and by SIGINT during step 10 of
  the runs resumed from it. Each stop saves its step with the input position (a signal also ends
  with errors.Interrupted); the last rerun ends with the parameters of an uninterrupted run, bit
  for bit, having skipped as many broken records."""
  assert threading.current_thread() is threading.main_thread()
  overrides = dict(STRAIGHT_RUN)
  overrides["input.data"], _ = broken_wds_shards(tmp_path / "shards")
  straight = local_config(shapes_data_dir, **overrides)
  summary = train.train_and_evaluate(straight, str(tmp_path / "straight"))
  # Each broken record is dropped once per epoch: three whole epochs, and some of the fourth.
  assert 3 * len(fx.BROKEN) <= summary["data/skipped"] <= 4 * len(fx.BROKEN)

  workdir = str(tmp_path / "stopped")
  train.train_and_evaluate(local_config(shapes_data_dir, stop_at_step=6, **overrides), workdir)
  assert final_params(workdir, straight)[1] == 6
  with open(os.path.join(workdir, "checkpoints", "6", "data", "metadata")) as f:
    assert json.load(f)["processes"][0][0] == 6 * 32  # examples consumed by the one process
  for signum, batch, step in ((signal.SIGTERM, 2, 8), (signal.SIGINT, 2, 10)):
    with monkeypatch.context() as m:
      signal_at_batch(m, signum, batch)
      with pytest.raises(errors.Interrupted) as e:
        train.train_and_evaluate(local_config(shapes_data_dir, **overrides), workdir)
    assert e.value.signum == signum and e.value.exit_status == 128 + signum
    name = signal.Signals(signum).name
    assert str(e.value).startswith(f"Stopped by {name} after step {step} of 12: checkpoint "
                                   f"{step} saved"), str(e.value)
    assert "rerun the same command" in str(e.value)
    assert final_params(workdir, straight)[1] == step
    assert not os.path.exists(os.path.join(workdir, lock.LOCK_NAME))  # released
    assert signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler)  # restored
  resumed = train.train_and_evaluate(local_config(shapes_data_dir, **overrides), workdir)
  assert resumed["step"] == 12
  assert resumed["data/skipped"] == summary["data/skipped"]
  want, _ = final_params(str(tmp_path / "straight"), straight)
  got, _ = final_params(workdir, straight)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


class Run:
  """`python -m flip.main` in the background, its stderr collected line by line."""

  def __init__(self, args):
    self.proc = subprocess.Popen([*forkserver.python(), "-m", "flip.main", *args], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    self.lines = []
    self.reader = threading.Thread(target=self._read, daemon=True)
    self.reader.start()

  def _read(self):
    for line in self.proc.stderr:
      self.lines.append(line)

  def wait_for(self, text, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and self.proc.poll() is None:
      if any(text in line for line in self.lines):
        return
      time.sleep(0.05)
    pytest.fail(f"{text!r} did not appear:\n{self.stderr[-3000:]}")

  def finish(self, timeout=240):
    try:
      self.proc.wait(timeout)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      pytest.fail(f"the run did not end in {timeout}s:\n{self.stderr[-3000:]}")
    self.reader.join(10)
    return self.proc.returncode

  @property
  def stderr(self):
    return "".join(self.lines)


def test_sigterm_to_flip_main(shapes_data_dir, tmp_path):
  """The operator's view, on data with broken records: SIGTERM -> one line, exit 143 and a
  checkpoint; a second signal ends the run at once (as SIGKILL would, possibly mid-save); the
  rerun takes over the lock the killed run left, resumes from the newest complete checkpoint and
  finishes. No libjpeg lines and no orbax INFO chatter reach stderr."""
  fx.write_shards(str(tmp_path / "shards"), num_shards=4, per_shard=30)
  workdir = tmp_path / "run"
  args = ["--config=configs/demo.py:local", f"--workdir={workdir}",
          f"--config.input.data_dir={shapes_data_dir}",
          f"--config.input.data=wds:{tmp_path}/shards/{{00000..00003}}.tar",
          "--config.total_steps=12", "--config.checkpoint_every_steps=4",
          "--config.log_every_steps=1", "--config.evals={}"]

  run = Run(args)
  run.wait_for("step 2/12")
  run.proc.send_signal(signal.SIGTERM)
  assert run.finish() == 143, run.stderr[-3000:]
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith("Stopped by SIGTERM after step ") and "rerun the same command" in last
  stopped_at = int(last.split("after step ")[1].split()[0])
  assert str(stopped_at) in os.listdir(workdir / "checkpoints")
  assert not (workdir / lock.LOCK_NAME).exists()
  assert "Skipped record" in run.stderr  # the broken records are logged by the pipeline ...
  for noise in ("Corrupt JPEG data", "Premature end of JPEG", "Improper call to JPEG"):
    assert noise not in run.stderr  # ... and libjpeg's own lines are gone
  saves = [line for line in run.stderr.splitlines() if "checkpoint" in line.lower()]
  assert not [s for s in saves if "orbax" in s.lower()], saves  # orbax's INFO lines are gone
  assert sum("Saving checkpoint" in s for s in saves) == len(
      [s for s in os.listdir(workdir / "checkpoints") if s.isdigit()])  # one line per save

  run = Run(args)
  run.wait_for(f"Resumed from step {stopped_at} of 12")
  run.wait_for(f"step {stopped_at + 1}/12")
  run.proc.send_signal(signal.SIGTERM)
  run.wait_for("SIGTERM received")
  run.proc.send_signal(signal.SIGTERM)  # the second: at once, without (finishing) a checkpoint
  assert run.finish() == -signal.SIGTERM, run.stderr[-3000:]
  assert "Stopped by SIGTERM" not in run.stderr
  assert (workdir / lock.LOCK_NAME).exists()  # left behind by the killed run

  # The rerun takes over the dead run's lock, resumes from the newest complete checkpoint (a
  # save the kill interrupted is left out) and finishes.
  complete = max(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
  run = Run(args)
  assert run.finish() == 0, run.stderr[-3000:]
  assert "Taking over the lock" in run.stderr and "no longer exists on this host" in run.stderr
  assert f"Resumed from step {complete} of 12" in run.stderr
  assert "step 12/12" in run.stderr
  assert "12" in os.listdir(workdir / "checkpoints")


def test_input_failure_mid_run_is_one_line_and_a_prompt_exit(shapes_data_dir, tmp_path):
  """The data files vanish mid-run (a lost mount): the run ends with one error line naming the
  source and the reason and exit status 1, promptly: no hang in the tf.data teardown."""
  fx.write_shards(str(tmp_path / "shards"), num_shards=2, per_shard=20, broken=False)
  run = Run(["--config=configs/demo.py:local", f"--workdir={tmp_path}/run",
             f"--config.input.data_dir={shapes_data_dir}",
             f"--config.input.data=wds:{tmp_path}/shards/{{00000..00001}}.tar",
             "--config.input.shuffle_buffer=1", "--config.total_steps=400",
             "--config.log_every_steps=1", "--config.evals={}"])
  run.wait_for("step 3/400")
  for name in os.listdir(tmp_path / "shards"):
    os.remove(tmp_path / "shards" / name)
  assert run.finish(timeout=120) == 1, run.stderr[-3000:]
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: The input pipeline of data source(s) wds:{tmp_path}/shards/"
                         "{00000..00001}.tar failed: A whole epoch of data source"), last
  assert "held no usable record" in last and "unreadable shard" in run.stderr
  assert not (tmp_path / "run" / lock.LOCK_NAME).exists()
