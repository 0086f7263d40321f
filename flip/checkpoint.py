"""Orbax checkpointing: periodic saves, automatic resume from the workdir, and the config."""

from __future__ import annotations

import functools
import logging as std_logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from flip import config_lib
from flip import distributed
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


class _QuietOrbax:
  """A logging filter: orbax's INFO lines (a dozen per save) stay out; its warnings pass. It
  also keeps the exception of orbax's last error record (orbax logs a failed background save and
  goes on; Checkpointer.check_for_errors reports it)."""

  last_error: BaseException | None = None

  def filter(self, record) -> bool:
    if f"{os.sep}orbax{os.sep}" not in record.pathname:
      return True
    if record.levelno >= std_logging.ERROR and record.exc_info and record.exc_info[1]:
      _QuietOrbax.last_error = record.exc_info[1]
    return record.levelno >= std_logging.WARNING


@functools.cache
def _quiet_orbax() -> None:
  logging.get_absl_logger().addFilter(_QuietOrbax())


class Checkpointer:
  """Saves the train state under `workdir/checkpoints/<step>`; restores the newest one.

  Orbax writes each step to a temporary directory and renames it when complete, so a run killed
  mid-save leaves the previous checkpoint intact and readable.
  """

  def __init__(self, workdir: str, every_steps: int = 1, keep: int = 1, read_only: bool = False,
               partial_reads: bool = False):
    _one_replica_writes_on_cpu()
    _quiet_orbax()
    self._last_save: int | None = None  # the step of the newest save started
    self._checked: int | None = None  # the newest save known to be complete
    self.directory = epath.Path(workdir) / "checkpoints"
    self.manager = ocp.CheckpointManager(
        self.directory,
        # The items' handlers, which item_metadata needs; for partial reads (load_params: the
        # parameters only, with PyTreeRestore) the handler is chosen by the restore arguments.
        **(dict(item_names=("state", "data")) if partial_reads else dict(item_handlers={
            "state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()})),
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=every_steps, max_to_keep=keep, create=not read_only,
            cleanup_tmp_directories=not read_only, read_only=read_only))

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
      return
    try:  # the run failed: saves in flight are finished first, so what the errors say holds
      self.close()
    except Exception as e:  # noqa: BLE001  (the run's own error is the one to report)
      logging.error("A checkpoint save failed while the run was stopping: %s", e)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def wait(self) -> None:
    """Waits until the saves in flight are on disk (raises errors.SaveError if one failed)."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._save_error(e) from e

  def check_for_errors(self) -> None:
    """errors.SaveError if a save that finished in the background failed (e.g. a full disk).

    Cheap enough to call every step. Besides orbax's own report, a finished save whose step
    directory was never renamed into place counts as failed (orbax logs such a failure in its
    finalising thread and goes on); that check is made in single-process runs, where the rename
    is this process's own.
    """
    try:
      self.manager.check_for_errors()
    except Exception as e:  # noqa: BLE001
      raise self._save_error(e) from e
    step = self._last_save
    if (step is None or step == self._checked or jax.process_count() > 1 or
        self.manager.is_saving_in_progress()):
      return
    self._checked = step
    if not (self.directory / str(step)).exists():
      error = _QuietOrbax.last_error or OSError("the checkpoint was not completed")
      raise self._save_error(error) from error

  def _save_error(self, e: Exception) -> errors.SaveError:
    steps = self._intact_steps()
    previous = (f"the newest complete checkpoint, step {steps[-1]}, is intact and a rerun "
                "resumes from it" if steps else "no complete checkpoint exists yet")
    which = f"checkpoint {self._last_save}" if self._last_save is not None else "a checkpoint"
    return errors.SaveError(
        f"Saving {which} to {self.directory} failed ({_gist(e)}): training stops here; "
        f"{previous}. "
        "Free disk space (or fix the storage) and rerun.")

  def _intact_steps(self) -> list[int]:
    """Steps whose directory is complete (orbax renames it into place when a save is done)."""
    try:
      return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())
    except OSError:
      return []

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

  def restore_newest_intact(self, abstract_state) -> tuple[Any, dict | None] | None:
    """restore() of the newest checkpoint that can be restored; None if there is none.

    A checkpoint that fails to restore (a truncated array file, missing metadata, a broken JSON
    file) is named in a warning and moved aside to `<workdir>/corrupt_checkpoints/`, and the
    next older one is tried; errors.CorruptCheckpointError if all of them fail. A checkpoint
    whose parameter shapes differ from the model's is not corrupt: that is
    errors.CheckpointMismatchError (the config changed), and nothing is moved.
    """
    failures = []
    while True:
      step = self.latest_step()
      if step is None:
        break
      problem = None
      try:
        check_shapes(self._state_metadata(step), abstract_state, self.directory / str(step))
        result = self.restore(abstract_state, step)
      except errors.CheckpointMismatchError:
        raise
      except Exception as e:  # noqa: BLE001  (whatever the damage, an older one may be intact)
        problem = _gist(e)[:500]
      if distributed.process_flags(problem is None).all():
        return result
      failures.append((step, problem or "failed to restore in another process"))
      moved = self._move_aside(step)
      logging.warning("Checkpoint %s/%d cannot be restored (%s); moved aside to %s. Trying the "
                      "next older one.", self.directory, step, failures[-1][1], moved)
    if failures:
      raise errors.CorruptCheckpointError(
          f"No checkpoint in {self.directory} can be restored: "
          + "; ".join(f"step {s}: {p}" for s, p in failures)
          + f". They were moved to {self.directory.parent / CORRUPT_DIR}. Delete the workdir "
          "(or choose another) to start anew, or repair the checkpoints and move them back.")
    return None

  def _state_metadata(self, step: int):
    """The saved tree of the state's array metadata (shape, dtype) of a step."""
    return self.manager.item_metadata(step)["state"]

  def _move_aside(self, step: int) -> epath.Path:
    """Moves checkpoint `step` to <workdir>/corrupt_checkpoints/ (process 0; all wait)."""
    target = self.directory.parent / CORRUPT_DIR / str(step)
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      n = 1
      while target.exists():
        n += 1
        target = target.parent / f"{step}.{n}"
      (self.directory / str(step)).rename(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"flip_checkpoint_moved_aside_{step}")
    self.manager.reload()
    return target

  def save(self, step: int, state, data: dict | None = None, force: bool = False) -> bool:
    """Saves the train state and, as JSON, where the input stream is (`data`)."""
    args = {"state": ocp.args.StandardSave(state)}
    if data is not None:
      args["data"] = ocp.args.JsonSave(data)
    try:  # orbax waits here for the previous save, and raises its error
      saved = self.manager.save(step, args=ocp.args.Composite(**args), force=force)
    except Exception as e:  # noqa: BLE001
      raise self._save_error(e) from e
    if saved:
      self._last_save = step
      logging.info("Saving checkpoint %s/%d (in the background).", self.directory, step)
    return saved

  def close(self) -> None:
    self.wait()
    self.manager.close()


CORRUPT_DIR = "corrupt_checkpoints"


def _gist(e: BaseException) -> str:
  """An exception as one line: its type and the first line of its message."""
  lines = str(e).splitlines()
  return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _path(path) -> str:
  return jax.tree_util.keystr(path, simple=True, separator="/")


def check_shapes(metadata, abstract_state, where) -> None:
  """errors.CheckpointMismatchError if the saved arrays' paths or shapes are not the state's."""
  saved = {_path(p): tuple(getattr(m, "shape", ()) or ())
           for p, m in jax.tree_util.tree_flatten_with_path(metadata)[0]}
  want = {_path(p): tuple(x.shape)
          for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
  if not saved:
    raise ValueError(f"the checkpoint's metadata in {where} lists no arrays")
  missing = sorted(set(want) - set(saved))
  extra = sorted(set(saved) - set(want))
  wrong = sorted(k for k in set(want) & set(saved) if want[k] != saved[k])
  if missing or extra or wrong:
    details = "; ".join(filter(None, [
        f"not in the checkpoint: {missing[:5]}" if missing else "",
        f"not in the model: {extra[:5]}" if extra else "",
        "other shapes: " + ", ".join(f"{k} {saved[k]} (model {want[k]})" for k in wrong[:5])
        if wrong else ""]))
    raise errors.CheckpointMismatchError(
        f"The checkpoint {where} does not fit the configured model ({details}): the run's "
        "config changed since it was saved. Use the config it was trained with (config.json in "
        "the workdir), or another --workdir for a new run.")


def load_params(workdir: str, abstract_params, step: int | None = None) -> tuple[Any, int]:
  """(parameters, step) of a training run's checkpoint (default: the newest), restored into
  `abstract_params`' shapes, dtypes and shardings (flip.models.flip.abstract_params); the
  optimizer state is not read. errors.NotFoundError, naming the steps there, if there is none."""
  ckpt = Checkpointer(workdir, read_only=True, partial_reads=True)
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
  wrote_all = distributed.process_flags(wrote)
  seen = bool(wrote_all.all()) and all(
      (path / f".write_probe_{i}").exists() for i in range(jax.process_count()))
  seen_all = distributed.process_flags(seen)  # also a barrier: no probe is deleted before every process looked
  if not wrote_all.all():
    return np.flatnonzero(wrote_all == 0).tolist(), []
  return [], np.flatnonzero(seen_all == 0).tolist()
