"""AdamW with the paper's weight-decay mask and a linear-warmup + cosine schedule."""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from flip import config_lib

# Parameters that get no weight decay: biases, LayerNorm scales, position embeddings and the
# temperature (FLIP excludes biases, norms and position embeddings; CLIP the temperature too).
NO_DECAY_PATTERNS = (r"(^|/)bias$", r"(^|/)scale$", r"pos_embed", r"logit_scale")


def path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def decay_mask(params):
  """True for the parameters that get weight decay (the kernels and token embeddings)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any(re.search(p, path_str(path)) for p in NO_DECAY_PATTERNS), params)


def peak_lr(config: ml_collections.ConfigDict) -> float:
  return config.optim.base_lr * config.input.global_batch_size / 256


def schedule_args(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The numbers of the learning-rate schedule, as float32/int32 scalars.

  The jitted train step takes them as an argument rather than baking them in as constants, so
  runs that differ only in their length (a resumed run given more steps, unmasked tuning at the
  pretraining resolution, tools/tradeoff.py's runs, a test's shortened run) share one compiled
  step, and its entry in the persistent compilation cache. The two quotients are precomputed in float32 the way XLA
  folds optax.warmup_cosine_decay_schedule's constants (x / c -> x * (1 / c); pi * x / c ->
  x * (pi * (1 / c))): the values are bit-identical to that schedule's, compiled, on the CPU.
  """
  batch = config.input.global_batch_size
  total = config_lib.steps_from(config, "total", batch)
  warmup = min(config_lib.steps_from(config.optim, "warmup", batch), total)
  decay = np.float32(max(total, warmup + 1) - warmup)  # the cosine's length, after the warmup
  one, peak = np.float32(1), np.float32(peak_lr(config))
  return {"peak_lr": peak, "half_peak_lr": np.float32(0.5) * peak,
          "warmup_steps": np.int32(warmup),
          "inv_warmup_steps": one / np.float32(warmup) if warmup else np.float32(0),
          "decay_steps": decay, "pi_over_decay_steps": np.float32(np.pi) * (one / decay)}


def warmup_cosine(args: dict[str, Any]) -> optax.Schedule:
  """Linear warmup from 0 to the peak lr, then a cosine to 0 at the last step, from
  schedule_args (arrays, traced or not)."""

  def fn(step):
    warmup = args["warmup_steps"]
    count = jnp.clip(step, 0, warmup).astype(jnp.float32)
    warm = (1 - count * args["inv_warmup_steps"]) * -args["peak_lr"] + args["peak_lr"]
    count = jnp.minimum((step - warmup).astype(jnp.float32), args["decay_steps"])
    cosine = (jnp.cos(count * args["pi_over_decay_steps"]) + 1) * args["half_peak_lr"]
    return jnp.where(step < warmup, warm, cosine)

  return fn


def schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from 0 to the peak lr, then cosine decay to 0 at the last step."""
  return warmup_cosine(schedule_args(config))


def make(config: ml_collections.ConfigDict,
         args: dict[str, Any] | None = None) -> optax.GradientTransformation:
  """AdamW with the weight-decay mask and the schedule of `args` (schedule_args(config) by
  default; the train step passes them as traced arrays)."""
  o = config.optim
  return optax.adamw(warmup_cosine(schedule_args(config) if args is None else args),
                     b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask)
