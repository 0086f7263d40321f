"""The train state, its sharded initialisation and the jitted masked-contrastive train step.

Pure JAX/Flax/optax (no TensorFlow): flip.train's loop and tools/benchmark.py both use it.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from flip import losses
from flip import optim
from flip import sharding
from flip.models import flip as flip_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def init_state(config: ml_collections.ConfigDict, model: flip_lib.FLIP,
               tx: optax.GradientTransformation, mesh: Mesh):
  """Returns (init_fn, abstract_state): init_fn(rng) creates the state already sharded;
  init_fn(rng, params) starts from given params instead (step 0, fresh optimizer state)."""
  size, text_len = config.input.image_size, config.input.text_len

  def boxed_init(rng):
    params = flip_lib.init_params(model, rng, size, text_len)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  # Traced once (~0.2 s of the :local model's start-up): the jit of the same function below
  # reuses this trace, whatever its out_shardings.
  boxed = jax.jit(boxed_init).eval_shape(jax.random.key(0))
  abstract = sharding.placed(boxed, mesh, config.logical_axis_rules)
  shardings = jax.tree.map(lambda x: x.sharding, abstract)
  # The same shardings in the boxed tree's structure (each nn.Partitioned box has one leaf).
  init_boxed = jax.jit(boxed_init, out_shardings=jax.tree.unflatten(
      jax.tree.structure(boxed), jax.tree.leaves(shardings)))
  from_params = jax.jit(
      lambda params: TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                opt_state=tx.init(params)),
      in_shardings=(shardings.params,), out_shardings=shardings)

  def init_fn(rng, params=None):
    return nn.unbox(init_boxed(rng)) if params is None else from_params(params)

  return init_fn, abstract


def train_step(state: TrainState, batch: dict[str, jax.Array], lr_args: dict[str, jax.Array], *,
               model: flip_lib.FLIP,
               make_tx: Callable[[dict[str, jax.Array]], optax.GradientTransformation],
               mask_ratio: float, mask_rng: jax.Array, loss_fn=losses.infonce
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One step of masked contrastive training; a fresh mask per step (rng folded with the step).

  lr_args: optim.schedule_args, an argument (not constants of the compiled step); make_tx(lr_args)
  gives the optimizer (optim.make). loss_fn(image_emb, text_emb, logit_scale): the contrastive
  loss (jit_train_step passes the blockwise sharded form).
  """
  rng = jax.random.fold_in(mask_rng, state.step)

  def objective(params):
    image_emb, text_emb, logit_scale = model.apply(
        {"params": params}, batch["image"], batch["text"], mask_ratio=mask_ratio,
        rngs={"mask": rng})
    return loss_fn(image_emb, text_emb, logit_scale), logit_scale

  (loss, logit_scale), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  updates, opt_state = make_tx(lr_args).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "logit_scale": jnp.exp(logit_scale),
             "lr": optim.warmup_cosine(lr_args)(state.step), "grad_norm": optax.tree.norm(grads)}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def abstract_batch(config: ml_collections.ConfigDict, mesh: Mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch's shapes, dtypes and shardings (for compiling ahead of time)."""
  b, size, text_len = (config.input.global_batch_size, config.input.image_size,
                       config.input.text_len)
  spec = sharding.batch_sharding(mesh)
  return {"image": jax.ShapeDtypeStruct((b, size, size, 3), jnp.float32, sharding=spec),
          "text": jax.ShapeDtypeStruct((b, text_len), jnp.int32, sharding=spec)}


def abstract_inputs(config: ml_collections.ConfigDict, mesh: Mesh):
  """The step's inputs after the state, for compiling ahead of time:
  step_fn.lower(abstract_state, *abstract_inputs(config, mesh))."""
  return abstract_batch(config, mesh), optim.schedule_args(config)


def jit_train_step(model: flip_lib.FLIP, config: ml_collections.ConfigDict, mask_ratio: float,
                   mask_rng: jax.Array, abstract_state, mesh: Mesh,
                   rules=sharding.DEFAULT_LOGICAL_AXIS_RULES):
  """train_step jitted with the state's shardings, batch-sharded inputs, replicated schedule
  numbers, activations sharded by the logical-axis `rules` (pass config.logical_axis_rules) and a
  donated state: step_fn(state, batch, optim.schedule_args(config)). The optimizer is
  optim.make(config) with the schedule numbers of the call."""
  state_shardings = jax.tree.map(lambda x: x.sharding, abstract_state)
  step = functools.partial(train_step, model=model,
                           make_tx=functools.partial(optim.make, config),
                           mask_ratio=mask_ratio, mask_rng=mask_rng,
                           loss_fn=functools.partial(losses.sharded_infonce, mesh=mesh,
                                                     batch_axes=sharding.BATCH_AXES))
  return jax.jit(
      sharding.with_activation_rules(step, mesh, rules),
      in_shardings=(state_shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=0)


def build(config: ml_collections.ConfigDict, mesh: Mesh, mask_ratio: float | None = None,
          mask_rng: jax.Array | None = None):
  """(model, init_fn, abstract_state, jitted step) of a resolved config, as training runs them:
  step_fn(state, batch, optim.schedule_args(config)).

  mask_ratio defaults to config.mask_ratio, mask_rng to a fixed key (benchmarks, planning).
  """
  model = flip_lib.from_config(config.model)
  init_fn, abstract = init_state(config, model, optim.make(config), mesh)
  step_fn = jit_train_step(
      model, config, config.mask_ratio if mask_ratio is None else mask_ratio,
      jax.random.key(1) if mask_rng is None else mask_rng, abstract, mesh,
      config.logical_axis_rules)
  return model, init_fn, abstract, step_fn
