"""Orbax checkpointing: periodic saves, automatic resume from the workdir, and the config."""

from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from flip import config_lib
from flip import errors


@functools.cache
def _one_replica_writes_on_cpu() -> None:
  """On the CPU backend, one replica writes each replicated array (orbax's default on GPUs).

  Orbax's replica-parallel saving splits every replicated array into per-device slices, and each
  slice's first save compiles its own slicing op: about a thousand of them for the demo's model on
  8 CPU devices, ~12 s at the first save on a 2-core machine (then 0.1 s). On TPUs, where it
  spreads the writes over hosts, orbax's default is kept.
  """
  if jax.default_backend() == "cpu":
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


class Checkpointer:
  """Saves the train state under `workdir/checkpoints/<step>`; restores the newest one.

  Orbax writes each step to a temporary directory and renames it when complete, so a run killed
  mid-save leaves the previous checkpoint intact and readable.
  """

  def __init__(self, workdir: str, every_steps: int = 1, keep: int = 1, read_only: bool = False):
    _one_replica_writes_on_cpu()
    self.directory = epath.Path(workdir) / "checkpoints"
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "data"),
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=every_steps, max_to_keep=keep, create=not read_only,
            cleanup_tmp_directories=not read_only, read_only=read_only))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, abstract_state, step: int | None = None) -> tuple[Any, dict | None]:
    """(state, input position) of a step (default: the newest).

    The state is restored into the shapes, dtypes and shardings of `abstract_state`
    (ShapeDtypeStructs); the input position is the JSON saved with it (None if absent).
    """
    step = self.latest_step() if step is None else step
    logging.info("Restoring checkpoint %s/%d", self.directory, step)
    has_data = (self.directory / str(step) / "data").exists()  # absent before input positions
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if has_data:
      args["data"] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"], (restored["data"] if has_data else None)

  def save(self, step: int, state, data: dict | None = None, force: bool = False) -> bool:
    """Saves the train state and, as JSON, where the input stream is (`data`)."""
    args = {"state": ocp.args.StandardSave(state)}
    if data is not None:
      args["data"] = ocp.args.JsonSave(data)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def load_params(workdir: str, abstract_params, step: int | None = None) -> tuple[Any, int]:
  """(parameters, step) of a training run's checkpoint (default: the newest), restored into
  `abstract_params`' shapes, dtypes and shardings (flip.models.flip.abstract_params); the
  optimizer state is not read. errors.NotFoundError, naming the steps there, if there is none."""
  ckpt = Checkpointer(workdir, read_only=True)
  try:
    steps = list(ckpt.manager.all_steps())
    step = ckpt.latest_step() if step is None else step
    if step is None or step not in steps:
      raise errors.NotFoundError(
          f"No checkpoint {'at step %d ' % step if step is not None else ''}in "
          f"{ckpt.directory} (steps there: {steps}): train first, or point at a training run.")
    logging.info("Restoring the parameters of checkpoint %s/%d", ckpt.directory, step)
    restored = ckpt.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item={"params": abstract_params},
        restore_args=ocp.checkpoint_utils.construct_restore_args({"params": abstract_params}),
        partial_restore=True)))
  finally:
    ckpt.close()
  return restored["state"]["params"], step


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Keeps the run's config next to its checkpoints (for evaluation and inference)."""
  if jax.process_index() == 0:
    (epath.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config.json, resolved (older configs get the values that describe their run)."""
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    raise errors.NotFoundError(f"{path} not found: {workdir} is not a FLIP training workdir.")
  return config_lib.resolve(config_lib.from_json(path.read_text()))


def check_writable(workdir: str) -> None:
  """Fails before any work if the workdir cannot be created or written, or, with several
  processes, is not one directory they all see (a collective then: every process calls it)."""
  path = epath.Path(workdir)
  probe = path / f".write_probe_{jax.process_index()}"
  error = None
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text("ok")
  except (OSError, PermissionError) as e:
    error = e
  failed, blind = _probes_seen(path, error is None) if jax.process_count() > 1 else ([], [])
  if error is None:
    probe.unlink()
  if error is not None or failed:
    raise errors.NotWritableError(
        f"Cannot write to --workdir={workdir} "
        f"({error or f'process(es) {failed} could not'}); choose a directory "
        "you can write to.") from error
  if blind:
    raise errors.ConfigError(
        f"--workdir={workdir} is not one directory shared by the {jax.process_count()} "
        f"processes: process(es) {blind} do not see the others' files in it. With several hosts, "
        "use storage that every host reads and writes (e.g. gs://bucket/run or a shared file "
        "system): all processes write the checkpoints there together.")


def _probes_seen(path: epath.Path, wrote: bool) -> tuple[list[int], list[int]]:
  """(processes that could not write their probe, processes that do not see every probe)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  def gather(flag: bool) -> np.ndarray:
    return np.asarray(multihost_utils.process_allgather(np.array([flag], np.int32))).reshape(-1)

  wrote_all = gather(wrote)
  seen = bool(wrote_all.all()) and all(
      (path / f".write_probe_{i}").exists() for i in range(jax.process_count()))
  seen_all = gather(seen)  # also a barrier: no probe is deleted before every process looked
  if not wrote_all.all():
    return np.flatnonzero(wrote_all == 0).tolist(), []
  return [], np.flatnonzero(seen_all == 0).tolist()
