"""Multi-process start-up: jax.distributed.initialize() when a run spans several processes.

Every process runs the same command; `initialize()` comes first in flip.main and flip.evaluate:

- Cloud TPU pod slices (on GCE or GKE), SLURM and Open MPI jobs, and indexed Kubernetes Jobs
  (the clusters JAX detects by itself): nothing to pass, JAX finds the coordinator, the number
  of processes and this process's id. A job of a single process (one SLURM task, one TPU host)
  is a plain single-process run.
- Any other multi-process setup (hand-launched GPU hosts, several processes on one machine):
  on every process pass --coordinator_address=HOST:PORT (process 0's host and a free port),
  --num_processes=N and --process_id=I (0..N-1, a different one on each process), or set the
  environment variables JAX_COORDINATOR_ADDRESS (read by JAX itself), JAX_NUM_PROCESSES and
  JAX_PROCESS_ID. Flags win over the environment.
- One process on one machine: nothing happens; --num_processes=1 (or JAX_NUM_PROCESSES=1) makes
  any process a single-process run, also inside a cluster.

Which cluster this process runs in is read here from what each cluster's launcher sets (see
`_CLUSTERS`; the same checks and order as JAX's own detection) so that a single-process job
does not start the distributed system; the settings themselves are left to JAX.

The processes then form one JAX system: jax.devices() lists every process's devices, the mesh
spans them all, each process feeds its share of the global batch, and checkpoints are written
by all processes together (orbax); config.json and the TensorBoard events come from process 0.

The functions import JAX, the module does not: every entry point imports it for its flags and
then restarts itself once (flip/hostmem.py) before JAX is needed.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import time
import urllib.error
import urllib.request
from typing import Callable

from absl import flags
from absl import logging

from flip import errors

_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None,
    "Multi-process runs JAX does not detect by itself: HOST:PORT of process 0 (any free port), "
    "the same on every process; or env JAX_COORDINATOR_ADDRESS.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-process runs: how many processes take part (same on every "
    "process; 1: a single-process run, also inside a cluster); or env JAX_NUM_PROCESSES.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Multi-process runs: this process's id, 0..num_processes-1, a different "
    "one on each process (0 runs the coordinator); or env JAX_PROCESS_ID.")

ENV_COORDINATOR_ADDRESS = "JAX_COORDINATOR_ADDRESS"  # jax.distributed.initialize reads it too
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"

_HOW = ("on every process pass --coordinator_address=HOST:PORT (process 0's host and a free "
        "port), --num_processes=N and --process_id=0..N-1 (a different id on each process), or "
        f"set {ENV_COORDINATOR_ADDRESS}, {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}")


def _setting(value, flag: flags.FlagHolder, env: str, parse) -> tuple[object, str]:
  """(value, where it came from): the argument, else the flag (once parsed), else the env var."""
  if value is not None:
    return value, f"{flag.name}={value}"
  if flags.FLAGS.is_parsed() and flag.value is not None:
    return flag.value, f"--{flag.name}={flag.value}"
  raw = os.environ.get(env, "").strip()
  if not raw:
    return None, ""
  try:
    return parse(raw), f"{env}={raw}"
  except ValueError:
    raise errors.ConfigError(f"{env}={raw!r} is not valid: it must be an integer.") from None


# Cluster detection, from what each cluster's launcher sets. These are the checks of JAX's own
# detection (its cluster classes, jax/_src/clusters, which have no public API), in its order;
# the first cluster present decides. JAX's mpi4py detection is opt-in only, never automatic.

_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")  # all set inside `srun`; JAX needs all of them
_OMPI_URI = "OMPI_MCA_orte_hnp_uri"  # set only in processes that mpirun/mpiexec started
_TPU_WORKERS = ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES")  # GKE: the slice's hosts
# Cloud TPU chips on the PCI bus, as JAX finds them: Google's vendor id, TPU v3 .. TPU7x ids.
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")


def _env_int(name: str) -> int:
  raw = os.environ.get(name, "").strip()
  try:
    return int(raw)
  except ValueError:
    raise errors.ConfigError(
        f"{name}={raw!r}: the cluster's process count must be an integer; for a multi-process "
        f"run outside such a cluster, {_HOW}.") from None


def _installed(module: str) -> bool:
  return importlib.util.find_spec(module) is not None


def _cloud_tpu_vm() -> bool:
  """Whether JAX will run on Cloud TPU here (as JAX decides it on import): TPU chips attached
  and libtpu installed, or JAX_FORCE_TPU_INIT set."""
  if "JAX_FORCE_TPU_INIT" in os.environ:
    return True
  library = os.environ.get("TPU_LIBRARY_PATH")
  if not (library and os.path.isfile(library)) and not _installed("libtpu"):
    return False
  for vendor_file in glob.glob("/sys/bus/pci/devices/*/vendor"):  # TPU chips by PCI id
    try:
      with open(vendor_file) as f:
        if f.read().strip() != _GOOGLE_PCI_VENDOR:
          continue
      with open(os.path.join(os.path.dirname(vendor_file), "device")) as f:
        if f.read().strip() in _TPU_PCI_DEVICES:
          return True
    except OSError:
      continue
  # Chips newer than the ids above: their device files (accel driver, or VFIO).
  return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def _gce_metadata(key: str) -> str | None:
  """This TPU VM's metadata attribute `key` from the GCE metadata server (where JAX reads it);
  None where it is not set. Raises OSError if the server does not answer."""
  host = os.environ.get("GCE_METADATA_IP", "metadata.google.internal")
  request = urllib.request.Request(
      f"http://{host}/computeMetadata/v1/instance/attributes/{key}",
      headers={"Metadata-Flavor": "Google"})
  for attempt in range(3):
    try:
      with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()
    except urllib.error.HTTPError as e:
      if e.code == 404:
        return None
      error = e
    except OSError as e:  # unreachable, timed out
      error = e
    if attempt < 2:
      time.sleep(0.5)
  raise OSError(f"the GCE metadata server {host} gave no {key!r}: {error}")


def _tpu_slices(metadata: bool) -> int:
  """The number of TPU slices (multislice): MEGASCALE_NUM_SLICES, from the environment, else
  (GCE) the VM's `tpu-env` metadata; 1 where unset."""
  raw = os.environ.get("MEGASCALE_NUM_SLICES")
  if raw is None and metadata:
    for line in (_gce_metadata("tpu-env") or "").splitlines():  # lines: KEY: 'VALUE'
      key, _, value = line.partition(":")
      if key.strip() == "MEGASCALE_NUM_SLICES":
        raw = value.strip().strip("'")
  if not raw:
    return 1
  try:
    return int(raw)
  except ValueError:
    raise errors.ConfigError(f"MEGASCALE_NUM_SLICES={raw!r} must be an integer.") from None


def _gke_tpu_workers() -> str | None:
  return next((os.environ[v] for v in _TPU_WORKERS if v in os.environ), None)


def _gce_tpu_present() -> bool:
  # JAX asks the metadata server (unless TPU_SKIP_MDS_QUERY, which it sets where no chips are).
  return (_cloud_tpu_vm() and "TPU_SKIP_MDS_QUERY" not in os.environ and
          _gce_metadata("agent-worker-number") is not None)


def _gce_tpu_count() -> int:
  workers = _gce_metadata("worker-network-endpoints") or ""
  return len(workers.split(",")) * _tpu_slices(metadata=True)


def _k8s_present() -> bool:
  # JAX needs the `kubernetes` package for this, and an Indexed Job (the index is the process id).
  return ("KUBERNETES_SERVICE_HOST" in os.environ and "JOB_COMPLETION_INDEX" in os.environ and
          _installed("kubernetes"))


# (JAX's name for the cluster, is this process in one, its number of processes or None where only
# JAX can find it out: a Kubernetes Job's parallelism comes from the Kubernetes API.)
_CLUSTERS: tuple[tuple[str, Callable[[], bool], Callable[[], int | None]], ...] = (
    ("OmpiCluster", lambda: _OMPI_URI in os.environ, lambda: _env_int("OMPI_COMM_WORLD_SIZE")),
    ("SlurmCluster", lambda: all(v in os.environ for v in _SLURM_VARS),
     lambda: _env_int("SLURM_NTASKS")),
    ("GkeTpuCluster", lambda: _cloud_tpu_vm() and _gke_tpu_workers() is not None,
     lambda: len(_gke_tpu_workers().split(",")) * _tpu_slices(metadata=False)),
    ("GceTpuCluster", _gce_tpu_present, _gce_tpu_count),
    ("K8sCluster", _k8s_present, lambda: None),
)


def detected_cluster() -> str | None:
  """The name of the multi-process cluster JAX detects by itself here (TPU pod, SLURM, ...).

  None where there is none, or it holds a single process (a one-task SLURM job is a plain
  single-process run; JAX would otherwise restrict it to one local GPU). Where the number of
  processes cannot be found here, the cluster is named and jax.distributed.initialize() decides.
  """
  for name, present, process_count in _CLUSTERS:
    try:
      if not present():
        continue
      count = process_count()
    except OSError as e:  # e.g. no answer from the metadata server: JAX tries on its own
      logging.warning("Cannot tell whether this is a %s (%s); leaving it to "
                      "jax.distributed.initialize().", name, e)
      return name
    if count is None:
      logging.info("In a %s: jax.distributed.initialize() finds its number of processes.", name)
      return name
    return name if count > 1 else None
  return None


def _check(address: str | None, num: int | None, pid: int | None, sources: list[str]) -> None:
  given = ", ".join(s for s in sources if s)
  if num is not None and num < 1:
    raise errors.ConfigError(f"{given}: the number of processes must be at least 1.")
  if pid is not None and pid < 0:
    raise errors.ConfigError(f"{given}: the process id must be 0 or more.")
  if pid is not None and num is not None and pid >= num:
    raise errors.ConfigError(f"{given}: the process id must be in 0..{num - 1}; give each of "
                             f"the {num} processes a different id from 0 to {num - 1}.")
  if address is not None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise errors.ConfigError(f"{given}: the coordinator address must be HOST:PORT, e.g. "
                               "10.0.0.1:1234 or localhost:1234 (process 0's host and a free "
                               "port).")


def _incomplete(explicit: list[str], missing: list[str]) -> errors.ConfigError:
  one = len(missing) == 1
  return errors.ConfigError(
      f"Incomplete multi-process settings ({', '.join(explicit)}): the "
      f"{' and '.join(missing)} {'is' if one else 'are'} not set, and JAX detects no cluster "
      f"here (TPU pod, SLURM, Open MPI) to take {'it' if one else 'them'} from. For a "
      f"multi-process run, {_HOW}; for a single process, set none of them.")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins this process to a multi-process run, if it is one; call before any other JAX use.

  Each argument left None is read from its flag, else its environment variable (see the module
  docstring); with none of them set, JAX's own cluster detection decides (TPU pod, SLURM,
  Open MPI). A single process on its own does nothing here.
  """
  import jax  # pylint: disable=g-import-not-at-top  (see the module docstring)
  if jax.distributed.is_initialized():
    _log_topology()
    return
  address, address_from = _setting(coordinator_address, _COORDINATOR_ADDRESS,
                                    ENV_COORDINATOR_ADDRESS, str)
  num, num_from = _setting(num_processes, _NUM_PROCESSES, ENV_NUM_PROCESSES, int)
  pid, pid_from = _setting(process_id, _PROCESS_ID, ENV_PROCESS_ID, int)
  _check(address, num, pid, [address_from, num_from, pid_from])
  explicit = [s for s in (address_from, num_from, pid_from) if s]
  if num == 1:  # a single process, in a cluster or not: nothing to join
    _log_topology()
    return
  cluster = detected_cluster() if None in (address, num, pid) else None
  missing = [name for name, value in (("coordinator address", address),
                                      ("number of processes", num), ("process id", pid))
             if value is None]

  if cluster is None:
    if not explicit:  # a single process: nothing to join
      _log_topology()
      return
    if missing:
      raise _incomplete(explicit, missing)

  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process on CPU
  where = " and ".join(explicit + ([f"JAX's detection of {cluster}"] if cluster else []))
  logging.info("Joining a multi-process run (settings from %s).", where)
  try:
    jax.distributed.initialize(coordinator_address=address, num_processes=num,
                               process_id=pid)
  except ValueError as e:
    if cluster is None or "defined" not in str(e):
      raise errors.ConfigError(f"Multi-process settings from {where}: {e}") from e
    # "... should/must be defined": JAX found no cluster here after all (the cases the checks
    # above leave to it, e.g. a TPU VM that is no pod slice).
    if explicit:
      raise _incomplete(explicit, missing) from e
    logging.info("JAX detects no %s here (%s): a single-process run.", cluster, e)
  except (RuntimeError, OSError) as e:  # OSError: e.g. JAX's own metadata request failed
    if "must be called before" in str(e):  # the caller used JAX first: a bug, not a setting
      raise
    raise errors.DistributedError(
        f"Could not join the multi-process run (settings from {where}): {e}. Check that every "
        "process was started with the same coordinator address and number of processes and a "
        "different process id, and that process 0's host is reachable on that port.") from e
  _log_topology()


def _log_topology() -> None:
  import jax  # pylint: disable=g-import-not-at-top  (see the module docstring)
  local, total = jax.local_device_count(), jax.device_count()
  logging.info("Process %d of %d: %d local %s device(s) of %d in all.", jax.process_index(),
               jax.process_count(), local, jax.local_devices()[0].platform, total)


def process_flags(flag: bool):
  """Every process's `flag`, as a numpy bool array [process_count] (a collective with several processes, and
  then also a barrier; no communication with one)."""
  import jax  # pylint: disable=g-import-not-at-top  (see the module docstring)
  import numpy as np  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return np.array([bool(flag)])
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  gathered = multihost_utils.process_allgather(np.array([flag], np.int32))
  return np.asarray(gathered).reshape(-1).astype(bool)
