"""Broken checkpoints and failed saves: a run falls back to the newest intact checkpoint, and a
save that fails (a full disk) stops training at once with the previous checkpoint intact."""

import os
import shutil
import subprocess
import sys

import pytest

from flip import checkpoint
from flip import errors
from flip import optim
from flip import sharding
from flip import train
from flip import train_step
from flip.models import flip as flip_lib
from test_train import ROOT, final_params, local_config

pytestmark = pytest.mark.slow  # a training run (once per module) and subprocess runs


@pytest.fixture(scope="module")
def trained(shapes_data_dir, tmp_path_factory):
  """A workdir with checkpoints 2, 4 and 6 of a short run, and the run's config."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  config = local_config(shapes_data_dir, total_steps=6, checkpoint_every_steps=2, evals={})
  train.train_and_evaluate(config, str(workdir))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"]
  return workdir, config


def abstract_state(config):
  mesh = sharding.make_mesh(config.mesh)
  _, abstract = train_step.init_state(config, flip_lib.from_config(config.model),
                                      optim.make(config), mesh)
  return abstract


def truncate_largest_array_file(step_dir):
  files = [os.path.join(d, f) for d, _, names in os.walk(step_dir / "state") for f in names
           if os.sep + "d" + os.sep in os.path.join(d, f)]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 3)


CORRUPTIONS = {
    "truncated array file": truncate_largest_array_file,
    "missing _METADATA": lambda d: os.remove(d / "state" / "_METADATA"),
    "garbage input-position JSON": lambda d: (d / "data" / "metadata").write_text("{garbage"),
    "garbage tree-metadata JSON": lambda d: (d / "state" / "_METADATA").write_text('{"tree": ['),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_corrupt_newest_checkpoint_is_moved_aside_and_the_older_one_restored(
    trained, tmp_path, kind, caplog):
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)
  CORRUPTIONS[kind](workdir / "checkpoints" / "6")
  ckpt = checkpoint.Checkpointer(str(workdir), 2, 3)
  with caplog.at_level("WARNING"):
    state, data = ckpt.restore_newest_intact(abstract_state(trained[1]))
  ckpt.close()
  assert int(state.step) == 4 and data["processes"][0][0] == 4 * 32
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  assert os.listdir(workdir / checkpoint.CORRUPT_DIR) == ["6"]  # kept, not deleted
  warning = [r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage()]
  assert len(warning) == 1 and "checkpoints/6 cannot be restored" in warning[0], warning
  assert f"moved aside to {workdir / checkpoint.CORRUPT_DIR / '6'}" in warning[0]


def test_a_rerun_resumes_from_the_intact_checkpoint_and_finishes(trained, tmp_path, caplog):
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)
  truncate_largest_array_file(workdir / "checkpoints" / "6")
  config = local_config(trained[1].input.data_dir, total_steps=8, checkpoint_every_steps=2,
                        evals={})
  with caplog.at_level("INFO"):
    summary = train.train_and_evaluate(config, str(workdir))
  assert summary["step"] == 8
  assert any("Resumed from step 4 of 8" in r.getMessage() for r in caplog.records)
  assert final_params(str(workdir), config)[1] == 8


def test_with_no_intact_checkpoint_the_run_stops_naming_them(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)
  for step in ("2", "4", "6"):
    os.remove(workdir / "checkpoints" / step / "state" / "_METADATA")
  ckpt = checkpoint.Checkpointer(str(workdir), 2, 3)
  with pytest.raises(errors.CorruptCheckpointError) as e:
    ckpt.restore_newest_intact(abstract_state(trained[1]))
  ckpt.close()
  message = str(e.value)
  for step in ("step 6:", "step 4:", "step 2:", checkpoint.CORRUPT_DIR, "start anew"):
    assert step in message, message
  assert sorted(os.listdir(workdir / checkpoint.CORRUPT_DIR)) == ["2", "4", "6"]


def test_a_checkpoint_of_another_model_is_a_mismatch_and_stays(trained, tmp_path):
  config = local_config(trained[1].input.data_dir, **{"model.embed_dim": 64})
  ckpt = checkpoint.Checkpointer(str(trained[0]), 2, 3, read_only=True)
  with pytest.raises(errors.CheckpointMismatchError, match="config changed") as e:
    ckpt.restore_newest_intact(abstract_state(config))
  ckpt.close()
  assert "(128, 128) (model (128, 64))" in str(e.value) or "model (" in str(e.value)
  assert sorted(os.listdir(trained[0] / "checkpoints")) == ["2", "4", "6"]


def tiny_filesystem_command():
  """A command prefix that runs its command in a private mount namespace (where the test mounts
  a small tmpfs), or None where this machine does not allow it."""
  for prefix in (["unshare", "-m"], ["unshare", "-rm"]):
    try:
      probe = subprocess.run(prefix + ["sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                             capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
      return None
    if probe.returncode == 0:
      return prefix
  return None


def test_a_full_disk_stops_training_at_the_failed_save(trained, tmp_path):
  """The workdir on a tmpfs with room for one checkpoint: the second save (step 10) fails, the
  run stops with one line no later than the next save (step 15: a background save on a busy
  machine can take the whole interval to fail), and checkpoint 5 is intact."""
  prefix = tiny_filesystem_command()
  if prefix is None:
    pytest.skip("no private mount namespace here (unshare -m) to mount a small tmpfs")
  step_bytes = sum(os.path.getsize(os.path.join(d, f))
                   for d, _, names in os.walk(trained[0] / "checkpoints" / "2") for f in names)
  size = int(step_bytes * 1.6) + (1 << 20)
  mount, copy = tmp_path / "tiny", tmp_path / "copy"
  mount.mkdir()
  args = [sys.executable, "-m", "flip.main", "--config=configs/demo.py:local",
          f"--workdir={mount}/run", f"--config.input.data_dir={trained[1].input.data_dir}",
          "--config.total_steps=20", "--config.checkpoint_every_steps=5",
          "--config.log_every_steps=1", "--config.evals={}"]
  script = (f"mount -t tmpfs -o size={size} tmpfs {mount} && cd {ROOT} && "
            f"{' '.join(args)}; rc=$?; cp -a {mount}/run {copy}; exit $rc")
  result = subprocess.run(prefix + ["sh", "-c", script], capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: Saving checkpoint 10 to ") and "training stops here" in last, last
  assert "No space left on device" in last and "Free disk space" in last, last
  assert "the newest complete checkpoint, step 5, is intact" in last, last
  steps = [int(line.split("step ")[1].split("/")[0]) for line in result.stderr.splitlines()
           if "step " in line and "/20 (" in line]
  assert steps and 10 <= max(steps) <= 15, steps  # stopped at the latest at the next save
  assert final_params(str(copy), trained[1])[1] == 5
