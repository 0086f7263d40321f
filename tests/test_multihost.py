"""Multi-process runs on localhost: each process with its own simulated CPU devices, joined
through flip.distributed (gloo collectives), against a single process with as many devices."""

import glob
import json
import os
import re
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import multihost_worker
from flip import checkpoint
from flip import distributed
from flip import optim
from flip import sharding
from flip import train_step
from flip.models import flip as flip_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multihost_worker.py")
DISTRIBUTED_ENV = (distributed.ENV_COORDINATOR_ADDRESS, distributed.ENV_NUM_PROCESSES,
                   distributed.ENV_PROCESS_ID)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_env(devices: int, **extra: str) -> dict[str, str]:
  """The environment of one process: its own simulated CPU devices, no inherited JAX settings."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS" and k not in DISTRIBUTED_ENV}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="2", **extra)
  return env


def run_processes(commands, log_dir, timeout=240):
  """Runs [(argv, env)] at once; all must succeed. Kills the rest as soon as one fails or on
  timeout (a lone survivor would wait for its peers in a collective). Returns (pids, logs)."""
  os.makedirs(log_dir, exist_ok=True)
  paths = [os.path.join(log_dir, f"process_{i}.log") for i in range(len(commands))]
  procs = []
  try:
    for (argv, env), path in zip(commands, paths):
      with open(path, "w") as log:
        procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
    deadline = time.time() + timeout
    while (any(p.poll() is None for p in procs) and time.time() < deadline and
           not any(p.poll() for p in procs)):
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  logs = []
  for path in paths:
    with open(path) as f:
      logs.append(f.read())
  failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
  assert not failed, "process(es) (index, exit code) %s failed or timed out:\n%s" % (
      failed, "\n".join(f"--- process {i}:\n{logs[i][-3000:]}" for i, _ in failed))
  return [p.pid for p in procs], logs


def join_env(num_processes: int, port: int, process_id: int) -> dict[str, str]:
  return {distributed.ENV_COORDINATOR_ADDRESS: f"localhost:{port}",
          distributed.ENV_NUM_PROCESSES: str(num_processes),
          distributed.ENV_PROCESS_ID: str(process_id)}


# Batch and parameters sharded across both processes (their checkpoint shards too); flip.main's
# run below covers pure data parallelism (parameters replicated in every process).
MESH, TAG = "fsdp=4", "fsdp4"


def test_two_processes_train_and_checkpoint_like_one(tmp_path):
  """2 processes x 2 devices == 1 process x 4 devices: same losses and params, each process
  feeding its half of the global batch; the checkpoint both write restores exactly, also into
  another process count; a workdir the processes do not share is refused."""
  worker = [sys.executable, WORKER, f"--mesh={MESH}"]
  port = free_port()
  two, one = tmp_path / "two", tmp_path / "one"
  two.mkdir()
  one.mkdir()
  start = time.time()
  run_processes([(worker + [f"--out={two}"], process_env(2, **join_env(2, port, i)))
                 for i in range(2)], tmp_path / "logs_two")
  middle = time.time()
  run_processes([(worker + [f"--out={one}"], process_env(4))], tmp_path / "logs_one")
  print(f"2 processes: {middle - start:.1f}s; 1 process: {time.time() - middle:.1f}s")

  for pid in range(2):  # the workdir check: one directory for all processes, or an error
    check = json.loads((two / f"workdir_check_{pid}.json").read_text())
    assert check["probes_left"] == []
    assert "not one directory shared by the 2 processes: process(es) [0, 1]" in (
        check["unshared_error"])
  assert json.loads((one / "workdir_check_0.json").read_text())["unshared_error"] is None
  for pid in range(2):  # an evaluation data set that only process 0 found: both stop
    error = json.loads((two / f"evaluators_{pid}.json").read_text())["error"]
    assert "zeroshot's data set was found by process(es) [0] but not by [1]" in error

  ref = json.loads((one / f"result_{TAG}_0.json").read_text())
  assert ref["process_count"] == 1 and ref["device_count"] == 4
  assert ref["losses"][-1] < ref["losses"][0]  # it trains
  for pid in range(2):
    got = json.loads((two / f"result_{TAG}_{pid}.json").read_text())
    assert (got["process_count"], got["device_count"], got["local_device_count"]) == (2, 4, 2)
    assert got["rows"] == list(range(4 * pid, 4 * pid + 4))  # its own half of the batch
    assert got["data"] == {"rows": [[0, 1, 2, 3], [4, 5, 6, 7]]}  # every process's, gathered
    assert got["restored_equal"] and got["shardings_kept"], pid
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-5)
    np.testing.assert_allclose(got["grad_norms"], ref["grad_norms"], rtol=1e-5)

  want, got = np.load(one / f"params_{TAG}.npz"), np.load(two / f"params_{TAG}.npz")
  assert sorted(want) == sorted(got) and len(want) > 10
  worst = max(float(np.max(np.abs(want[k] - got[k]))) for k in want)
  print(f"losses {ref['losses']}; params max |1-process - 2-process| {worst:.2e}")
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)

  # The 2-process checkpoint, restored by this single process (4 of its devices).
  restored = restore_params(str(two / f"ckpt_{TAG}"),
                            multihost_worker.tiny_config(multihost_worker.mesh_axes(MESH)))
  for k in got:
    np.testing.assert_array_equal(restored[k], got[k], err_msg=k)


def restore_params(ckpt_dir, config):
  """{path: numpy array} of the params in a checkpoint, restored onto 4 of this process's devices."""
  mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:4])
  _, abstract = train_step.init_state(config, flip_lib.from_config(config.model),
                                      optim.make(config), mesh)
  ckpt = checkpoint.Checkpointer(ckpt_dir, 1, 2)
  state, _ = ckpt.restore(abstract)
  ckpt.close()
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]}


def events_pids(workdir) -> list[int]:
  """The process ids in the names of the TensorBoard event files (…tfevents.TIME.HOST.PID…)."""
  names = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  return sorted(int(re.match(r"events\.out\.tfevents\.\d+\.(.+)\.(\d+)\.\d+\.v2$",
                             os.path.basename(n)).group(2)) for n in names)


def test_flip_main_runs_and_resumes_as_two_processes(shapes_data_dir, tmp_path):
  """`python -m flip.main` as 2 processes (flags --coordinator_address/--num_processes/
  --process_id): trains, evaluates, checkpoints, and a rerun resumes from the checkpoint."""
  workdir = tmp_path / "run"

  def main(total_steps, logs):
    port = free_port()
    argv = [sys.executable, "-m", "flip.main", "--config=configs/demo.py:local",
            f"--workdir={workdir}", f"--config.input.data_dir={shapes_data_dir}",
            f"--config.total_steps={total_steps}", "--config.checkpoint_every_steps=2",
            "--config.evals.linear_probe.max_train_examples=500",
            f"--coordinator_address=localhost:{port}", "--num_processes=2"]
    start = time.time()
    pids, out = run_processes([(argv + [f"--process_id={i}"], process_env(1)) for i in range(2)],
                              tmp_path / logs)
    print(f"flip.main to step {total_steps} as 2 processes: {time.time() - start:.1f}s")
    for i, log in enumerate(out):
      assert f"Process {i} of 2: 1 local cpu device(s) of 2 in all" in log
      assert f"step {total_steps}/{total_steps}" in log
    return pids, out

  pids, _ = main(4, "logs_first")
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  assert os.listdir(workdir).count("config.json") == 1
  assert checkpoint.read_config(str(workdir)).total_steps == 4
  assert events_pids(workdir) == [pids[0]]  # TensorBoard events: process 0's only
  saved = json.loads((workdir / "checkpoints" / "4" / "data" / "metadata").read_text())
  assert [row[0] for row in saved["processes"]] == [4 * 16, 4 * 16]  # each its half of 32 a step

  pids_again, logs = main(6, "logs_resumed")
  for log in logs:
    assert "Resumed from step 4 of 6" in log
  saved = json.loads((workdir / "checkpoints" / "6" / "data" / "metadata").read_text())
  assert [row[0] for row in saved["processes"]] == [6 * 16, 6 * 16]  # went on from step 4's place
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"]
  assert events_pids(workdir) == sorted([pids[0], pids_again[0]])
  assert checkpoint.read_config(str(workdir)).total_steps == 6


# flip.distributed's settings, without starting anything (jax.distributed.initialize recorded).

@pytest.fixture
def calls(monkeypatch):
  for name in DISTRIBUTED_ENV + ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
                                 "SLURM_PROCID", "SLURM_LOCALID", "OMPI_MCA_orte_hnp_uri"):
    monkeypatch.delenv(name, raising=False)
  recorded = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: recorded.append(kw))
  return recorded


def test_single_process_does_nothing(calls, monkeypatch):
  distributed.initialize()
  monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "1")
  distributed.initialize()
  assert calls == []


def test_explicit_settings_from_arguments_and_environment(calls, monkeypatch):
  distributed.initialize("localhost:1234", 2, 1)
  monkeypatch.setenv(distributed.ENV_COORDINATOR_ADDRESS, "10.0.0.1:555")
  monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "4")
  monkeypatch.setenv(distributed.ENV_PROCESS_ID, "3")
  distributed.initialize()
  assert calls == [dict(coordinator_address="localhost:1234", num_processes=2, process_id=1),
                   dict(coordinator_address="10.0.0.1:555", num_processes=4, process_id=3)]


def test_detected_cluster_initializes_without_arguments(calls, monkeypatch):
  """A multi-task SLURM job: JAX finds the settings itself; a one-task job is a single process."""
  for name, value in [("SLURM_JOB_ID", "77"), ("SLURM_STEP_NODELIST", "node[1-2]"),
                      ("SLURM_NTASKS", "1"), ("SLURM_PROCID", "0"), ("SLURM_LOCALID", "0")]:
    monkeypatch.setenv(name, value)
  distributed.initialize()
  assert calls == []
  monkeypatch.setenv("SLURM_NTASKS", "2")
  assert distributed.detected_cluster() == "SlurmCluster"
  distributed.initialize()
  assert calls == [dict(coordinator_address=None, num_processes=None, process_id=None)]


def test_unreachable_coordinator_fails_clearly(calls, monkeypatch):
  def fail(**kwargs):
    raise RuntimeError("DEADLINE_EXCEEDED: Barrier timed out")
  monkeypatch.setattr(jax.distributed, "initialize", fail)
  with pytest.raises(ConnectionError, match="DEADLINE_EXCEEDED.*same coordinator address"):
    distributed.initialize("10.0.0.1:1234", 2, 1)


@pytest.mark.parametrize("args,env,message", [
    ((None, 2, 2), {}, r"process id must be in 0\.\.1"),
    ((None, None, -1), {}, "process id must be 0 or more"),
    (("localhost:1234", 0, 0), {}, "at least 1"),
    (("localhost", 2, 0), {}, "HOST:PORT"),
    ((None, 2, 0), {}, "coordinator address is not set"),
    ((None, None, None), {"JAX_COORDINATOR_ADDRESS": "h:1"}, "number of processes and process id"),
    ((None, None, None), {"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES='two'.*integer"),
    ((None, None, None), {"JAX_PROCESS_ID": "0"},
     "coordinator address and number of processes are not"),
])
def test_inconsistent_settings_fail_clearly(calls, monkeypatch, args, env, message):
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  with pytest.raises(ValueError, match=message):
    distributed.initialize(*args)
  assert calls == []
