"""Multi-process start-up: jax.distributed.initialize() when a run spans several processes.

Every process runs the same command; `initialize()` comes first in flip.main and flip.evaluate:

- Cloud TPU pod slices, SLURM and Open MPI jobs (the clusters JAX detects by itself): nothing to
  pass, JAX finds the coordinator, the number of processes and this process's id.
- Any other multi-process setup (hand-launched GPU hosts, several processes on one machine):
  on every process pass --coordinator_address=HOST:PORT (process 0's host and a free port),
  --num_processes=N and --process_id=I (0..N-1, a different one on each process), or set the
  environment variables JAX_COORDINATOR_ADDRESS (read by JAX itself), JAX_NUM_PROCESSES and
  JAX_PROCESS_ID. Flags win over the environment.
- One process on one machine: nothing happens.

The processes then form one JAX system: jax.devices() lists every process's devices, the mesh
spans them all, each process feeds its share of the global batch, and checkpoints are written
by all processes together (orbax); config.json and the TensorBoard events come from process 0.
"""

from __future__ import annotations

import os

import jax
from absl import flags
from absl import logging

_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None,
    "Multi-process runs JAX does not detect by itself: HOST:PORT of process 0 (any free port), "
    "the same on every process; or env JAX_COORDINATOR_ADDRESS.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-process runs: how many processes take part (same on every "
    "process); or env JAX_NUM_PROCESSES.")
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
    raise ValueError(f"{env}={raw!r} is not valid: it must be an integer.") from None


def detected_cluster() -> str | None:
  """The name of the multi-process cluster JAX detects by itself here (TPU pod, SLURM, ...).

  None where there is none, or it holds a single process (a one-task SLURM job is a plain
  single-process run; JAX would otherwise restrict it to one local GPU).
  """
  try:
    from jax._src import clusters  # pylint: disable=g-import-not-at-top
    candidates = list(clusters.ClusterEnv._cluster_types)  # pylint: disable=protected-access
  except (ImportError, AttributeError):  # a JAX without this (private) registry: nothing detected
    logging.warning("Cannot ask this JAX version which cluster it runs in; for a multi-process "
                    "run, %s.", _HOW)
    return None
  for env in candidates:
    if env.opt_in_only_method or not env.is_env_present():
      continue
    try:
      count = env.get_process_count()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("%s detected but its process count is unknown (%s); initializing anyway.",
                      env.__name__, e)
      return env.__name__
    return env.__name__ if count > 1 else None
  return None


def _check(address: str | None, num: int | None, pid: int | None, sources: list[str]) -> None:
  given = ", ".join(s for s in sources if s)
  if num is not None and num < 1:
    raise ValueError(f"{given}: the number of processes must be at least 1.")
  if pid is not None and pid < 0:
    raise ValueError(f"{given}: the process id must be 0 or more.")
  if pid is not None and num is not None and pid >= num:
    raise ValueError(f"{given}: the process id must be in 0..{num - 1}; give each of the {num} "
                     f"processes a different id from 0 to {num - 1}.")
  if address is not None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise ValueError(f"{given}: the coordinator address must be HOST:PORT, e.g. "
                       "10.0.0.1:1234 or localhost:1234 (process 0's host and a free port).")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins this process to a multi-process run, if it is one; call before any other JAX use.

  Each argument left None is read from its flag, else its environment variable (see the module
  docstring); with none of them set, JAX's own cluster detection decides (TPU pod, SLURM,
  Open MPI). A single process on its own does nothing here.
  """
  if jax.distributed.is_initialized():
    _log_topology()
    return
  address, address_from = _setting(coordinator_address, _COORDINATOR_ADDRESS,
                                    ENV_COORDINATOR_ADDRESS, str)
  num, num_from = _setting(num_processes, _NUM_PROCESSES, ENV_NUM_PROCESSES, int)
  pid, pid_from = _setting(process_id, _PROCESS_ID, ENV_PROCESS_ID, int)
  _check(address, num, pid, [address_from, num_from, pid_from])
  explicit = [s for s in (address_from, num_from, pid_from) if s]
  cluster = detected_cluster() if None in (address, num, pid) else None

  if cluster is None:
    if num == 1 or not explicit:  # a single process: nothing to join
      _log_topology()
      return
    missing = [name for name, value in (("coordinator address", address),
                                        ("number of processes", num), ("process id", pid))
               if value is None]
    if missing:
      raise ValueError(f"Incomplete multi-process settings ({', '.join(explicit)}): the "
                       f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                       "set, and JAX detects no cluster here (TPU pod, SLURM, Open MPI) to take "
                       f"{'it' if len(missing) == 1 else 'them'} from. For a multi-process run, "
                       f"{_HOW}; for a single process, set none of them.")

  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process on CPU
  where = " and ".join(explicit + ([f"JAX's detection of {cluster}"] if cluster else []))
  logging.info("Joining a multi-process run (settings from %s).", where)
  try:
    jax.distributed.initialize(coordinator_address=address, num_processes=num,
                               process_id=pid)
  except RuntimeError as e:
    if "must be called before" in str(e):  # the caller used JAX first: a bug, not a setting
      raise
    raise ConnectionError(
        f"Could not join the multi-process run (settings from {where}): {e}. Check that every "
        "process was started with the same coordinator address and number of processes and a "
        "different process id, and that process 0's host is reachable on that port.") from e
  _log_topology()


def _log_topology() -> None:
  local, total = jax.local_device_count(), jax.device_count()
  logging.info("Process %d of %d: %d local %s device(s) of %d in all.", jax.process_index(),
               jax.process_count(), local, jax.local_devices()[0].platform, total)
