"""End-to-end training on the embedded data set: runs, resumes exactly, fails clearly."""

import json
import os
import shutil
import subprocess
import time

import jax
import numpy as np
import pytest
import tensorflow as tf

import forkserver
import shard_fixtures as fx
from conftest import LOCAL_RUN
from conftest import local_demo_config as local_config
from conftest import xla_flags
from flip import checkpoint
from flip import errors
from flip import train
from flip import train_step

pytestmark = pytest.mark.slow  # training loops and subprocess runs of flip.main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def final_params(workdir, config):
  """The params of the newest checkpoint in `workdir`, as numpy."""
  from flip import optim, sharding
  from flip.models import flip as flip_lib
  mesh = sharding.make_mesh(config.mesh)
  _, abstract = train_step.init_state(config, flip_lib.from_config(config.model),
                                      optim.make(config), mesh)
  ckpt = checkpoint.Checkpointer(workdir, 1, 3)
  state, _ = ckpt.restore(abstract)
  ckpt.close()
  return jax.tree.map(np.asarray, state.params), int(state.step)


def test_local_run_trains_evaluates_and_checkpoints(local_run, shapes_data_dir, tmp_path):
  workdir, summary = local_run  # train.train_and_evaluate(config, workdir), shared
  config = local_config(shapes_data_dir, **LOCAL_RUN)
  assert summary["step"] == config.total_steps == 20
  assert np.isfinite(summary["train/loss"])
  assert 0.0 <= summary["zeroshot/acc1"] <= 1.0
  for key in ("train/lr", "train/logit_scale", "train/steps_per_sec", "train/images_per_sec",
              "retrieval/text_retrieval_recall@1", "retrieval/image_retrieval_recall@10", "zeroshot/acc5"):
    assert key in summary
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]
  assert tf.io.gfile.glob(os.path.join(workdir, "events.out.tfevents.*"))
  assert checkpoint.read_config(workdir).mask_ratio == config.mask_ratio

  shutil.copytree(workdir, tmp_path / "run")  # the shared run stays as it was
  again = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert again["step"] == 20 and "train/loss" not in again  # finished: evaluates, trains nothing
  assert again["zeroshot/acc1"] == summary["zeroshot/acc1"]


def broken_wds_shards(directory):
  """wds shards with every kind of broken record, and their spec (issue 3's robustness cases)."""
  shards = fx.write_shards(str(directory), num_shards=4, per_shard=30)
  return f"wds:{directory}/{{00000..00003}}.tar", shards


def test_trains_from_every_source_format(shapes_data_dir, tmp_path):
  """A few steps from a mixture of webdataset tars, TFRecords, TFDS and a TSV file: every
  source checked and read (each one's input position advanced), broken records skipped."""
  wds, _ = broken_wds_shards(tmp_path / "wds")
  fx.write_shards(str(tmp_path / "tfrecord"), fmt="tfrecord", num_shards=2, per_shard=20)
  tsv = fx.write_csv(str(tmp_path / "csv"), num=40, missing=1)["path"]
  specs = [f"{wds}?weight=2", f"tfrecord:{tmp_path}/tfrecord/*.tfrecord", "tfds:flip_shapes",
           f"csv:{tsv}"]
  config = local_config(shapes_data_dir, total_steps=3, evals={}, log_every_steps=1,
                        **{"input.data": "; ".join(specs)})
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["step"] == 3 and np.isfinite(summary["train/loss"])
  assert summary["data/skipped"] >= 0
  saved = json.loads((tmp_path / "run" / "checkpoints" / "3" / "data" / "metadata").read_text())
  consumed, _, *positions = saved["processes"][0]
  assert consumed == 3 * 32
  for i, spec in enumerate(specs):  # [epoch, chunk, next index] of each source
    assert positions[3 * i:3 * i + 3] != [0, 0, 0], spec


def test_nan_guard_stops_with_a_clear_message(shapes_data_dir, tmp_path):
  config = local_config(shapes_data_dir, evals={}, checkpoint_every_steps=2, log_every_steps=1,
                        **{"optim.base_lr": 1e12, "optim.warmup_steps": 1})
  with pytest.raises(errors.DivergedError, match="diverged.*base_lr") as e:
    train.train_and_evaluate(config, str(tmp_path))
  steps = [int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
  if steps:  # whatever was saved was saved before the loss went bad
    params, _ = final_params(str(tmp_path), config)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
    # The step it names is complete on disk (a save in flight finished before the message).
    assert f"the last good checkpoint (step {max(steps)}) is kept" in str(e.value)
  else:
    assert "no checkpoint was saved" in str(e.value)


@pytest.mark.parametrize("overrides,error,message", [
    ({"input.global_batch_size": 12}, ValueError, "divisible by the 8 devices"),
    ({"model.text.vocab_size": 1000}, ValueError, "vocab_size=30522"),
    ({"input.data": "tfds:no_such_dataset_xyz"}, ValueError, "Unknown TFDS data set"),
    ({"input.data": "wds:/no/such/dir/{000..003}.tar"}, FileNotFoundError, "does not exist"),
    ({"input.data": "tfds:flip_shapes?text_key=caption"}, ValueError, "no feature"),
    ({"mesh.model": 3}, ValueError, "config.mesh"),
])
def test_bad_input_fails_fast(shapes_data_dir, tmp_path, overrides, error, message, monkeypatch):
  """Before a model is built or anything is written to the workdir."""
  def no_build(*args, **kwargs):
    raise AssertionError("the model was built before the input was checked")

  monkeypatch.setattr(train.train_step_lib, "build", no_build)
  with pytest.raises(error, match=message):
    train.train_and_evaluate(local_config(shapes_data_dir, **overrides), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_unusable_source_fails_fast_with_one_line(shapes_data_dir, tmp_path):
  """flip.main on a `wds:` file that is no tar: one error line naming the source, status 1, a
  prompt exit (no hang, no abort), the workdir untouched."""
  bad = tmp_path / "shards" / "00000.tar"
  bad.parent.mkdir()
  bad.write_bytes(b"<html>404 not found</html>" * 50)
  start = time.time()
  result = run_main("--config=configs/demo.py:local", f"--workdir={tmp_path}/run",
                    f"--config.input.data_dir={shapes_data_dir}",
                    f"--config.input.data=wds:{bad}", timeout=120)
  assert result.returncode == 1, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith(f"error: Data source wds:{bad}: none of the first 1 records"), lines[-1]
  assert "unreadable shard" in lines[-1] and "Traceback" not in result.stderr
  assert sum("Skipped record" in line for line in lines) <= 1
  assert not (tmp_path / "run").exists()
  print(f"failed in {time.time() - start:.1f}s")


def test_unwritable_workdir_fails_fast(shapes_data_dir, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(PermissionError, match="--workdir"):
    train.train_and_evaluate(local_config(shapes_data_dir), str(blocker / "run"))


def run_main(*args, timeout=300):
  return subprocess.run([*forkserver.python(), "-m", "flip.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


def test_cli_rejects_unknown_config_field(tmp_path):
  result = run_main("--config=configs/demo.py", f"--workdir={tmp_path}", "--config.input.bogus=1")
  assert result.returncode != 0
  assert "bogus" in result.stderr


def test_cli_reports_missing_dataset(tmp_path):
  result = run_main("--config=configs/vitb16_mask50.py", f"--workdir={tmp_path}")
  assert result.returncode == 1
  assert "--config.input.data" in result.stderr


DEMO_STEPS = 40  # of the demo's 2,200


def test_demo_learns_well_above_chance(shapes_data_dir, tmp_path):
  """A shortened demo run (40 of its 2200 steps, its schedule shortened with it; the probe on
  1,000 training images) beats chance (1/48) zero-shot by far.

  Measured 2026-12-07 (AMD EPYC, 2 cores) on the tests' 5,000 training images: 17.1% zero-shot,
  2.0% image->text top-1 and 20.5% probe after 40 steps (after 60: 18.9%, 3.3%, 23.0%, and on
  all 20,000 images 18.3%, 3.1%, 20.0%), against the 10.4%, 0.5% and 4.2% asked.

  It runs in a subprocess on one CPU device, as the demo does: with 8 simulated devices on a
  2-core machine, the busy input pipeline can starve XLA's cross-device rendezvous into its
  timeout.
  """
  code = f"""
import json
import tensorflow as tf
tf.config.set_visible_devices([], "GPU")
from flip import train
from flip.configs import demo
config = demo.get_config()
config.input.data_dir = {shapes_data_dir!r}
config.total_steps = config.checkpoint_every_steps = {DEMO_STEPS}
config.evals.linear_probe.max_train_examples = 1000
for ev in config.evals.values():
  ev.every_steps = {DEMO_STEPS}
print("SUMMARY", json.dumps(train.train_and_evaluate(config, {str(tmp_path)!r})))
"""
  env = dict(os.environ, XLA_FLAGS=xla_flags())  # one device
  result = subprocess.run([*forkserver.python(), "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout.split("SUMMARY", 1)[1])
  chance = 1 / 48
  print(f"demo after {DEMO_STEPS} steps: zero-shot top-1 {summary['zeroshot/acc1']:.3f}, "
        f"i2t top-1 {summary['retrieval/text_retrieval_recall@1']:.3f}, "
        f"probe {summary['linear_probe/acc1']:.3f}")
  assert summary["step"] == DEMO_STEPS
  assert summary["zeroshot/acc1"] > 5 * chance, summary
  assert summary["retrieval/text_retrieval_recall@1"] > 5 / 1000, summary  # chance: 1 of 1000 images
  assert summary["linear_probe/acc1"] > 2 * chance, summary
