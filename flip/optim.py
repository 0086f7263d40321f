"""AdamW with the paper's weight-decay mask and a linear-warmup + cosine schedule."""

from __future__ import annotations

import re

import jax
import ml_collections
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


def schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from 0 to the peak lr, then cosine decay to 0 at the last step."""
  batch = config.input.global_batch_size
  total = config_lib.steps_from(config, "total", batch)
  warmup = min(config_lib.steps_from(config.optim, "warmup", batch), total)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak_lr(config), warmup_steps=warmup,
      decay_steps=max(total, warmup + 1), end_value=0.0)


def make(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  o = config.optim
  return optax.adamw(schedule(config), b1=o.b1, b2=o.b2, eps=o.eps,
                     weight_decay=o.weight_decay, mask=decay_mask)
