"""train_and_evaluate(config, workdir): the one resumable training loop for every recipe."""

from __future__ import annotations

import contextlib
import math
import signal
import time
from typing import Any

import jax
import ml_collections
from absl import logging
from clu import metric_writers

from flip import checkpoint
from flip import config_lib
from flip import errors
from flip import evaluation
from flip import lock
from flip import memory
from flip import optim
from flip import preemption
from flip import pretrained
from flip import sharding
from flip import train_step as train_step_lib
from flip.data import pipeline
from flip.data import spec
from flip.data import tokenizer as tokenizer_lib
from flip.evaluation import embed


def _flat_hparams(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flat_hparams(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
  return out


def _format_duration(seconds: float) -> str:
  seconds = int(seconds)
  h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _check_finite(loss: float, step: int, ckpt: checkpoint.Checkpointer) -> None:
  if not math.isfinite(loss):
    ckpt.wait()  # a save in flight finishes first: the step named below is on disk
    last_saved = ckpt.latest_step()
    kept = (f"the last good checkpoint (step {last_saved}) is kept and a rerun resumes from it"
            if last_saved is not None else "no checkpoint was saved")
    raise errors.DivergedError(
        f"Loss is {loss} at step {step}: training diverged; {kept}. Lower config.optim.base_lr "
        "(or lengthen warmup) or check the input data.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (resuming from `workdir` if it holds a checkpoint); returns the last metrics.

  Before anything is written to `workdir`: every data source is listed and its first usable
  record decoded, and every evaluation data set looked up. The run then holds the workdir's lock
  (flip/lock.py) and stops cleanly on SIGTERM/SIGINT (flip/preemption.py: a checkpoint, then
  errors.Interrupted).
  """
  config = config_lib.resolve(config)
  spec.parse(config.input.data)  # training needs data (errors.ConfigError when it is not set)
  mesh = sharding.make_mesh(config.mesh)
  batch_size = config.input.global_batch_size
  sharding.check_batch(batch_size, mesh)
  tokenizer = tokenizer_lib.from_config(config.input)
  tokenizer_lib.check_vocab_size(tokenizer, config.model.text.vocab_size)
  pipeline.check_sources(config)

  init_rng, mask_rng = jax.random.split(jax.random.key(config.seed))
  model, init_fn, abstract_state, step_fn = train_step_lib.build(config, mesh, mask_rng=mask_rng)
  evaluators = evaluation.make_evaluators(
      config, embed.Embedder(model, tokenizer, mesh, batch_size, config.logical_axis_rules),
      missing_ok=True)
  total_steps = config_lib.steps_from(config, "total", batch_size)
  with contextlib.ExitStack() as stack:
    stack.enter_context(lock.WorkdirLock(workdir))
    stop = stack.enter_context(preemption.StopSignal())
    checkpoint.check_writable(workdir)
    ckpt = stack.enter_context(checkpoint.Checkpointer(
        workdir, config.checkpoint_every_steps, config.keep_checkpoints))
    return _loop(config, workdir, mesh, tokenizer, total_steps, init_rng,
                 (model, init_fn, abstract_state, step_fn), evaluators, ckpt, stop)


def _loop(config, workdir, mesh, tokenizer, total_steps, init_rng, built, evaluators, ckpt,
          stop) -> dict[str, float]:
  """The training loop of train_and_evaluate, inside the lock, the signal handlers and the
  checkpointer (closed, its saves finished, however the loop ends)."""
  _, init_fn, abstract_state, step_fn = built
  batch_size = config.input.global_batch_size
  restored = ckpt.restore_newest_intact(abstract_state)
  if restored is not None:
    state, data_position = restored
    input_state = pipeline.restore_input_state(data_position, config)
    logging.info("Resumed from step %d of %d (input: %s).", int(state.step), total_steps,
                 input_state)
  else:
    # A new run: random parameters, or those of config.init_from (e.g. unmasked tuning).
    params = (pretrained.initial_params(config, mesh, abstract_state.params)
              if config.init_from else None)
    state = init_fn(init_rng, params)
    input_state = pipeline.InputState.start(len(pipeline.parse_sources(config)))
  start_step = int(state.step)
  checkpoint.write_config(config, workdir)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams(_flat_hparams(config))
  num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_state.params))
  logging.info("Model: %.2fM parameters; mesh %s; global batch %d; %d steps; mask ratio %.2f.",
               num_params / 1e6, dict(mesh.shape), batch_size, total_steps, config.mask_ratio)

  # Compiled ahead of time to report its per-device memory before the first batch.
  lr_args = optim.schedule_args(config)
  step_fn = step_fn.lower(abstract_state, train_step_lib.abstract_batch(config, mesh),
                          lr_args).compile()
  logging.info("Compiled train step: %s.", memory.report(step_fn, abstract_state))
  end_step = min(total_steps, config.stop_at_step) if config.stop_at_step else total_steps
  host_batches = (pipeline.numpy_iterator(pipeline.train_dataset(config, tokenizer, input_state))
                  if start_step < end_step else iter(()))
  batches = pipeline.prefetch_to_device(pipeline.reporting_errors(host_batches, config), mesh,
                                        config.input.prefetch_to_device)

  summary: dict[str, float] = {}

  def run_evals(names: list[str], step: int, params) -> float:
    """Runs the named evaluators, writes and logs their metrics; returns the seconds taken."""
    start = time.time()
    for name in names:
      t0 = time.time()
      results = {f"{name}/{k}": v for k, v in evaluators[name](params).items()}
      writer.write_scalars(step, results)
      summary.update(results)
      logging.info("eval %s at step %d (%.1fs): %s", name, step, time.time() - t0,
                   ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
    return time.time() - start

  try:
    timer_step, timer_start = start_step, time.time()
    train_seconds = 0.0  # wall-clock of training (input + steps, not evaluation) in this process
    for step in range(start_step + 1, end_step + 1):
      host_batch, batch = next(batches)
      input_state.update(host_batch)
      state, metrics = step_fn(state, batch, lr_args)
      is_last = step == end_step
      is_log = step % config.log_every_steps == 0 or is_last
      is_save = step % config.checkpoint_every_steps == 0 or is_last

      if is_log or is_save:
        metrics = jax.device_get(metrics)
        _check_finite(float(metrics["loss"]), step, ckpt)
      if is_log:
        elapsed = time.time() - timer_start
        train_seconds += elapsed
        steps_per_sec = (step - timer_step) / max(elapsed, 1e-9)
        timer_step, timer_start = step, time.time()
        scalars = {f"train/{k}": float(v) for k, v in metrics.items()}
        scalars.update({"train/steps_per_sec": steps_per_sec,
                        "train/images_per_sec": steps_per_sec * batch_size,
                        "train/seconds": train_seconds,
                        "data/skipped": pipeline.total_skipped(input_state)})
        writer.write_scalars(step, scalars)
        summary.update(scalars)
        logging.info("step %d/%d (%.0f%%) | loss %.4f | lr %.3g | logit scale %.1f | "
                     "%.2f steps/s | %.0f img/s | %d skipped | ETA %s", step, total_steps,
                     100 * step / total_steps, metrics["loss"], metrics["lr"],
                     metrics["logit_scale"], steps_per_sec, steps_per_sec * batch_size,
                     scalars["data/skipped"],
                     _format_duration((total_steps - step) / max(steps_per_sec, 1e-9)))

      stopping = stop.should_stop(step)  # a SIGTERM/SIGINT: save now, evaluate nothing
      if not stopping:
        due = [name for name in evaluators
               if step % config.evals[name].every_steps == 0 or is_last]
        timer_start += run_evals(due, step, state.params)  # evaluation is not in the throughput

      if is_save or stopping:
        ckpt.save(step, state, pipeline.save_input_state(input_state, config),
                  force=is_last or stopping)
      ckpt.check_for_errors()  # a failed save (e.g. a full disk) stops the run at once
      if stopping:
        ckpt.wait()
        name = signal.Signals(stop.signum).name
        raise errors.Interrupted(
            f"Stopped by {name} after step {step} of {total_steps}: checkpoint {step} saved in "
            f"{ckpt.directory}; rerun the same command to resume from it.", stop.signum)
  except BaseException:
    pipeline.keep_alive(host_batches)  # a tf.data iterator is not destroyed mid-stream
    raise
  finally:
    writer.flush()
  if start_step >= end_step:  # nothing left to train: report the final model's metrics
    logging.info("The checkpoint is already at step %d; evaluating it.", start_step)
    run_evals(list(evaluators), start_step, state.params)

  writer.flush()
  summary["step"] = int(state.step)
  return summary
