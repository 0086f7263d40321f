"""Multi-process runs on localhost: each process with its own simulated CPU devices, joined
through flip.distributed (gloo collectives), against a single process with as many devices."""

import glob
import json
import os
import re
import signal
import socket
import subprocess
import time

import jax
import numpy as np
import pytest

import forkserver
import multihost_worker
from conftest import small_evals
from conftest import xla_flags
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
  """The environment of one process: its own simulated CPU devices, no inherited settings of the
  distributed run (the test session's compile flags are kept)."""
  env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
  env.update(XLA_FLAGS=xla_flags(devices), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             **extra)
  return env


def run_processes(commands, log_dir, timeout=240, expect=0, during=None):
  """Runs [(argv, env)] at once; all must exit with `expect`. Kills the rest as soon as one
  fails or on timeout (a lone survivor would wait for its peers in a collective).
  `during(procs, log_paths)` is called every 0.2 s while they run (e.g. to send a signal).
  Returns (pids, logs)."""
  os.makedirs(log_dir, exist_ok=True)
  paths = [os.path.join(log_dir, f"process_{i}.log") for i in range(len(commands))]
  procs = []

  def failed_early():
    return any(p.poll() not in (None, expect) for p in procs)

  try:
    for (argv, env), path in zip(commands, paths):
      with open(path, "w") as log:
        procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
    deadline = time.time() + timeout
    while (any(p.poll() is None for p in procs) and time.time() < deadline and
           not failed_early()):
      if during is not None:
        during(procs, paths)
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
  failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != expect]
  assert not failed, "process(es) (index, exit code) %s failed or timed out:\n%s" % (
      failed, "\n".join(f"--- process {i}:\n{logs[i][-3000:]}" for i, _ in failed))
  return [forkserver.pid_of(p) for p in procs], logs


def join_env(num_processes: int, port: int, process_id: int) -> dict[str, str]:
  return {distributed.ENV_COORDINATOR_ADDRESS: f"localhost:{port}",
          distributed.ENV_NUM_PROCESSES: str(num_processes),
          distributed.ENV_PROCESS_ID: str(process_id)}


# Batch and parameters sharded across both processes (their checkpoint shards too); flip.main's
# run below covers pure data parallelism (parameters replicated in every process).
MESH, TAG = "fsdp=4", "fsdp4"


@pytest.mark.slow
def test_two_processes_train_and_checkpoint_like_one(tmp_path):
  """2 processes x 2 devices == 1 process x 4 devices: same losses and params, each process
  feeding its half of the global batch; the checkpoint both write restores exactly, also into
  another process count; a workdir the processes do not share is refused."""
  worker = [*forkserver.python(), WORKER, f"--mesh={MESH}"]
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


def sigterm_when(text, process):
  """A `during` hook for run_processes: SIGTERM to one process once its log shows `text`."""
  sent = []

  def during(procs, paths):
    if not sent:
      with open(paths[process]) as f:
        if text in f.read():
          procs[process].send_signal(signal.SIGTERM)
          sent.append(time.time())

  return during


@pytest.mark.slow
def test_flip_main_runs_stops_on_sigterm_and_resumes_as_two_processes(shapes_data_dir,
                                                                     tmp_path):
  """`python -m flip.main` as 2 processes (flags --coordinator_address/--num_processes/
  --process_id) trains, evaluates and checkpoints. A SIGTERM to one of them (a preemption
  notice) stops both after the same step, with a checkpoint and exit status 143; the rerun
  resumes from it and ends with the parameters of an uninterrupted run, bit for bit."""

  def main(workdir, logs, evals=True, **kwargs):
    port = free_port()
    argv = [*forkserver.python(), "-m", "flip.main", "--config=configs/demo.py:local",
            f"--workdir={workdir}", f"--config.input.data_dir={shapes_data_dir}",
            "--config.total_steps=6", "--config.checkpoint_every_steps=3",
            "--config.log_every_steps=1", *(small_evals() if evals else ["--config.evals={}"]),
            f"--coordinator_address=localhost:{port}", "--num_processes=2"]
    start = time.time()
    out = run_processes([(argv + [f"--process_id={i}"], process_env(1)) for i in range(2)],
                        tmp_path / logs, **kwargs)
    print(f"flip.main as 2 processes ({logs}): {time.time() - start:.1f}s")
    for i, log in enumerate(out[1]):
      assert f"Process {i} of 2: 1 local cpu device(s) of 2 in all" in log
    return out

  straight, workdir = tmp_path / "straight", tmp_path / "run"
  pids, logs = main(straight, "logs_straight", evals=False)  # the resumed run evaluates
  assert all("step 6/6" in log for log in logs)
  assert sorted(os.listdir(straight / "checkpoints")) == ["3", "6"]
  assert os.listdir(straight).count("config.json") == 1
  assert checkpoint.read_config(str(straight)).total_steps == 6
  assert events_pids(straight) == [pids[0]]  # TensorBoard events: process 0's only
  saved = json.loads((straight / "checkpoints" / "6" / "data" / "metadata").read_text())
  assert [row[0] for row in saved["processes"]] == [6 * 16, 6 * 16]  # each its half of 32 a step

  _, logs = main(workdir, "logs_stopped", evals=False, expect=143,
                 during=sigterm_when("step 1/6", 1))
  stopped = [re.search(r"Stopped by SIGTERM after step (\d+) of 6", log) for log in logs]
  assert all(stopped), [log[-2000:] for log in logs]
  step = int(stopped[0].group(1))
  assert int(stopped[1].group(1)) == step and 1 < step < 6  # the same step in both
  assert str(step) in os.listdir(workdir / "checkpoints")
  saved = json.loads((workdir / "checkpoints" / str(step) / "data" / "metadata").read_text())
  assert [row[0] for row in saved["processes"]] == [step * 16, step * 16]

  _, logs = main(workdir, "logs_resumed")
  for log in logs:
    assert f"Resumed from step {step} of 6" in log and "step 6/6" in log
    assert "eval zeroshot at step 6" in log
  config = checkpoint.read_config(str(straight))
  want, got = restore_params(str(straight), config), restore_params(str(workdir), config)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


# flip.distributed's settings, without starting anything (jax.distributed.initialize recorded).

# What the clusters' launchers set (and JAX's detection reads): none of it inherited by a test.
CLUSTER_ENV = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID", "SLURM_STEP_NUM_NODES", "OMPI_MCA_orte_hnp_uri",
               "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK",
               "TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID",
               "MEGASCALE_NUM_SLICES", "TPU_SKIP_MDS_QUERY", "JAX_FORCE_TPU_INIT",
               "KUBERNETES_SERVICE_HOST", "JOB_COMPLETION_INDEX")


def no_metadata_server(key):
  raise OSError(f"no metadata server in tests (asked for {key})")


@pytest.fixture
def calls(monkeypatch):
  """jax.distributed.initialize recorded, in an environment of no cluster at all."""
  for name in DISTRIBUTED_ENV + CLUSTER_ENV:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(distributed, "_cloud_tpu_vm", lambda: False)
  monkeypatch.setattr(distributed, "_gce_metadata", no_metadata_server)
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


# Cluster detection from a fake environment (flip.distributed reads it without JAX internals).

SLURM = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_PROCID": "0",
         "SLURM_LOCALID": "0"}
OMPI = {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1,10.148.0.1:34911",
        "OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}
K8S = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOB_COMPLETION_INDEX": "0"}
GCE_TWO_HOSTS = {"agent-worker-number": "0",
                 "worker-network-endpoints": "w0:0:10.0.0.2,w1:1:10.0.0.3"}
GCE_ONE_HOST = {"agent-worker-number": "0", "worker-network-endpoints": "10.0.0.2"}


def fake_cluster(monkeypatch, env=(), tpu_vm=False, metadata=None, installed=()):
  """This process in a fake cluster: its environment variables, whether it is a Cloud TPU VM,
  its GCE metadata ({key: value}; None: no metadata server) and the packages installed."""
  for name, value in dict(env).items():
    monkeypatch.setenv(name, value)
  monkeypatch.setattr(distributed, "_cloud_tpu_vm", lambda: tpu_vm)
  if metadata is not None:
    monkeypatch.setattr(distributed, "_gce_metadata", metadata.get)
  monkeypatch.setattr(distributed, "_installed", lambda module: module in installed)


@pytest.mark.parametrize("kind,cluster", [
    ("ompi", dict(env={**OMPI, "OMPI_COMM_WORLD_SIZE": "4"})),
    ("slurm", dict(env={**SLURM, "SLURM_NTASKS": "2"})),
    ("gke_tpu", dict(env={"TPU_WORKER_HOSTNAMES": "h0,h1", "TPU_WORKER_ID": "0"}, tpu_vm=True)),
    ("gke_tpu_addresses", dict(env={"TPU_PROCESS_ADDRESSES": "h0:8476,h1:8476"}, tpu_vm=True)),
    ("gke_tpu_multislice", dict(env={"TPU_WORKER_HOSTNAMES": "h0", "MEGASCALE_NUM_SLICES": "2"},
                                tpu_vm=True)),
    ("gce_tpu", dict(tpu_vm=True, metadata=GCE_TWO_HOSTS)),
    ("gce_tpu_multislice", dict(tpu_vm=True, metadata={
        **GCE_ONE_HOST, "tpu-env": "ACCELERATOR_TYPE: 'v5litepod-8'\nMEGASCALE_NUM_SLICES: '2'"})),
    ("k8s", dict(env=K8S, installed=("kubernetes",))),  # its size: the Kubernetes API, JAX's job
])
def test_each_cluster_kind_detected_with_several_processes(calls, monkeypatch, kind, cluster):
  fake_cluster(monkeypatch, **cluster)
  name = {"ompi": "OmpiCluster", "slurm": "SlurmCluster", "gce": "GceTpuCluster",
          "gke": "GkeTpuCluster", "k8s": "K8sCluster"}[kind.split("_")[0]]
  assert distributed.detected_cluster() == name
  distributed.initialize()  # JAX finds the settings itself
  assert calls == [dict(coordinator_address=None, num_processes=None, process_id=None)]


@pytest.mark.parametrize("cluster", [
    dict(env={**OMPI, "OMPI_COMM_WORLD_SIZE": "1"}),
    dict(env={**SLURM, "SLURM_NTASKS": "1"}),
    dict(env={"SLURM_JOB_ID": "77", "SLURM_NTASKS": "2"}),  # an salloc shell, not in srun
    dict(env={"TPU_WORKER_HOSTNAMES": "h0", "TPU_WORKER_ID": "0"}, tpu_vm=True),
    dict(env={"TPU_WORKER_HOSTNAMES": "h0,h1"}),  # not a TPU VM
    dict(tpu_vm=True, metadata=GCE_ONE_HOST),  # a single-host TPU VM
    dict(tpu_vm=True, metadata={}),  # a TPU VM of no pod slice
    dict(env={"TPU_SKIP_MDS_QUERY": "1"}, tpu_vm=True, metadata=GCE_TWO_HOSTS),
    dict(env=K8S),  # JAX's Kubernetes detection needs the kubernetes package
    dict(env={"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, installed=("kubernetes",)),  # not indexed
])
def test_one_process_clusters_are_single_process_runs(calls, monkeypatch, cluster):
  fake_cluster(monkeypatch, **cluster)
  assert distributed.detected_cluster() is None
  distributed.initialize()
  assert calls == []


def test_no_cluster_environment_detects_nothing(calls):
  assert distributed.detected_cluster() is None
  distributed.initialize()
  assert calls == []


def test_one_process_setting_wins_over_a_cluster(calls, monkeypatch):
  fake_cluster(monkeypatch, env={**SLURM, "SLURM_NTASKS": "2"})
  monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "1")
  distributed.initialize()
  assert calls == []


def test_cluster_jax_does_not_find_is_a_single_process(calls, monkeypatch):
  """Left to JAX (metadata server not answering here, a Kubernetes Job's size) and JAX finds no
  cluster: a single process, or an error where some settings were given."""
  def nothing_detected(**kwargs):
    calls.append(kwargs)
    raise ValueError("coordinator_address should be defined.")
  monkeypatch.setattr(jax.distributed, "initialize", nothing_detected)
  fake_cluster(monkeypatch, tpu_vm=True)  # and no metadata server (the fixture's)
  assert distributed.detected_cluster() == "GceTpuCluster"
  distributed.initialize()
  fake_cluster(monkeypatch, env=K8S, installed=("kubernetes",))
  assert distributed.detected_cluster() == "K8sCluster"
  distributed.initialize()
  assert len(calls) == 2
  with pytest.raises(ValueError, match="coordinator address and number of processes are not"):
    distributed.initialize(process_id=0)


def test_bad_cluster_process_count_fails_clearly(calls, monkeypatch):
  fake_cluster(monkeypatch, env={**SLURM, "SLURM_NTASKS": "two"})
  with pytest.raises(ValueError, match="SLURM_NTASKS='two'.*integer"):
    distributed.initialize()
  assert calls == []


def test_metadata_server_and_tpu_vm_checks(monkeypatch):
  """The real checks behind the fakes above: a GCE metadata server (one served here), whether
  this machine is a Cloud TPU VM (it is none, unless JAX is told to initialize a TPU)."""
  import http.server
  import threading

  class Metadata(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # pylint: disable=invalid-name
      known = self.headers.get("Metadata-Flavor") == "Google" and self.path.endswith(
          "/computeMetadata/v1/instance/attributes/agent-worker-number")
      self.send_response(200 if known else 404)
      self.end_headers()
      self.wfile.write(b"3" if known else b"not found")

    def log_message(self, *args):
      pass

  server = http.server.HTTPServer(("localhost", 0), Metadata)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    monkeypatch.setenv("GCE_METADATA_IP", f"localhost:{server.server_port}")
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    assert distributed._gce_metadata("agent-worker-number") == "3"
    assert distributed._gce_metadata("worker-network-endpoints") is None
  finally:
    server.shutdown()
    server.server_close()
  monkeypatch.delenv("JAX_FORCE_TPU_INIT", raising=False)
  monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
  monkeypatch.setattr(distributed, "_installed", lambda module: False)
  assert not distributed._cloud_tpu_vm()  # no libtpu: JAX runs no TPU here
  monkeypatch.setenv("JAX_FORCE_TPU_INIT", "1")
  assert distributed._cloud_tpu_vm()


def test_detection_uses_no_jax_internals():
  with open(os.path.join(ROOT, "flip", "distributed.py")) as f:
    assert "jax._src" not in f.read()
