"""The device mesh, the logical-axis rules, and the shardings of parameters, activations, batches.

At the bottom of the import graph (of flip, it imports only flip.errors): the models name their
parameters' axes (`embed`, `mlp`, `heads`, ...) and constrain their activations (`batch`,
`act_*`) with the functions here, and the rules map those names onto the mesh.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flip import errors

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")

# Parameters use the `embed`/`mlp`/`heads`/`vocab`/... names that flip.models attach with
# nn.with_logical_partitioning; activations the ACTIVATION_AXES names of `constrain`. Defaults:
# parameters and optimizer state split FSDP-style (ZeRO) over `fsdp` by their `embed` axis,
# attention heads and MLP units over `model` (tensor parallel), activations over the batch axes
# (data, fsdp) and, inside attention and MLP, over `model`. With the default mesh (fsdp=1,
# model=1) it is pure data parallelism.
DEFAULT_LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "model"),
    ("act_kv", None),
    ("act_mlp", "model"),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("vocab", "model"),
    ("proj", None),
    ("patch", None),
    ("length", None),
    ("layers", None),  # the stacked-blocks axis of scanned towers
)

# Logical names of activation axes. The rules map them to the mesh: the batch over the batch
# axes, heads and MLP units over `model`. Without these constraints XLA may keep the batch whole
# and split the weights' axes instead.
ACTIVATION_AXES = ("batch", "act_length", "act_embed", "act_heads", "act_kv", "act_mlp")

_ACTIVATION_SHARDING: contextvars.ContextVar = contextvars.ContextVar("activation_sharding",
                                                                      default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules):
  """While a model is traced inside it, `constrain` shards activations over `mesh` by `rules`.

  Own context rather than flax's global rules + mesh: those would also constrain parameter
  initialisers inside apply (flax's shape checks), which breaks DenseGeneral's flat kernels.
  """
  token = _ACTIVATION_SHARDING.set((mesh, tuple(tuple(r) for r in rules)))
  try:
    yield
  finally:
    _ACTIVATION_SHARDING.reset(token)


def constrain(x: jax.Array, names: tuple[str, ...]) -> jax.Array:
  """Shards an activation by the rules of the enclosing activation_sharding; a no-op outside one
  (e.g. a plain model.apply on one device)."""
  current = _ACTIVATION_SHARDING.get()
  if current is None:
    return x
  mesh, rules = current
  return nn.with_logical_constraint(x, names, rules=rules, mesh=mesh)


def with_activation_rules(fn, mesh: Mesh, rules):
  """`fn` with the model's activations sharded by `rules` when traced (wrap what is jitted)."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with activation_sharding(mesh, rules):
      return fn(*args, **kwargs)
  return wrapped


def one_device_mesh() -> Mesh:
  """The mesh of JAX's first device alone (inference, reading and checking parameters)."""
  return make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, model=1)),
                   devices=jax.devices()[:1])


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
  """A (data, fsdp, model) mesh; one size may be -1 to take the remaining devices."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  sizes = {a: int(mesh_config.get(a, 1)) for a in AXES}
  unknown = set(mesh_config.keys()) - set(AXES)
  if unknown:
    raise errors.ConfigError(f"Unknown mesh axes {sorted(unknown)}; the mesh axes are {AXES}.")
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise errors.ConfigError(f"Only one mesh axis may be -1, got {free}.")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if devices.size % fixed:
      raise errors.ConfigError(
          f"config.mesh {sizes}: {devices.size} devices are not divisible by {fixed}.")
    sizes[free[0]] = devices.size // fixed
  if math.prod(sizes.values()) != devices.size:
    raise errors.ConfigError(
        f"config.mesh {sizes} needs {math.prod(sizes.values())} devices but there are "
        f"{devices.size}; set the sizes so their product is {devices.size} "
        "(or one of them to -1).")
  return Mesh(devices.reshape([sizes[a] for a in AXES]), AXES)


def batch_ways(mesh: Mesh) -> int:
  """How many ways the batch is split: the product of the batch axes."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch(global_batch_size: int, mesh: Mesh) -> None:
  ways = batch_ways(mesh)
  if global_batch_size % ways or global_batch_size % jax.process_count():
    raise errors.ConfigError(
        f"config.input.global_batch_size={global_batch_size} must be divisible by the "
        f"{ways} devices it is split over (mesh {dict(mesh.shape)}) and by the "
        f"{jax.process_count()} processes; use a multiple of {math.lcm(ways, jax.process_count())}.")


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _axes(mesh_axes) -> tuple[str, ...]:
  if mesh_axes is None:
    return ()
  return tuple(mesh_axes) if isinstance(mesh_axes, (tuple, list)) else (mesh_axes,)


def check_rules(boxed_tree, mesh: Mesh, rules, required: tuple[str, ...] = ()) -> None:
  """Stops, before anything is compiled, on rules that cannot shard every value of the tree.

  Flax silently replicates a logical axis that no rule names; here that is an error (for the
  tree's axes and the `required` activation axes), as are rules naming mesh axes that do not
  exist and dimensions the mesh axes do not divide.
  """
  rules = [tuple(rule) for rule in rules]
  for rule in rules:
    if len(rule) != 2 or not all(a in mesh.shape for a in _axes(rule[1])):
      raise errors.ConfigError(
          f"config.logical_axis_rules entry {rule} must be (logical_name, mesh_axes) "
          f"with mesh_axes None, one of {tuple(mesh.shape)} or a tuple of them.")
  known = {name for name, _ in rules}
  missing = [name for name in required if name not in known]
  if missing:
    raise errors.ConfigError(
        f"config.logical_axis_rules names no rule for the activation axes {missing}; "
        "add them (see flip.sharding.DEFAULT_LOGICAL_AXIS_RULES).")
  boxed_leaves = jax.tree_util.tree_flatten_with_path(
      boxed_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
  for path, leaf in boxed_leaves:
    if not isinstance(leaf, nn.LogicallyPartitioned):
      continue
    where = jax.tree_util.keystr(path, simple=True, separator="/")
    unmatched = [n for n in leaf.names if n is not None and n not in known]
    if unmatched:
      raise errors.ConfigError(
          f"{where} has logical axes {unmatched} that no rule in config.logical_axis_rules "
          f"names; add ('{unmatched[0]}', None) to replicate it or e.g. ('{unmatched[0]}', "
          "'fsdp') to shard it.")
    spec = nn.logical_to_mesh_axes(leaf.names, rules)
    for name, dim, mesh_axes in zip(leaf.names, leaf.value.shape, spec):
      ways = math.prod(mesh.shape[a] for a in _axes(mesh_axes))
      if dim % ways:
        raise errors.ConfigError(
            f"{where}: its '{name}' dimension of size {dim} cannot be split {ways} ways over "
            f"mesh axes {mesh_axes} (mesh {dict(mesh.shape)}); change config.mesh, or map "
            f"'{name}' to other mesh axes (or None) in config.logical_axis_rules.")


def logical_shardings(boxed_tree, mesh: Mesh, rules,
                      required: tuple[str, ...] = ACTIVATION_AXES) -> object:
  """NamedShardings for a tree of nn.LogicallyPartitioned (abstract) values (checked first;
  `required`: activation axes the rules must name too)."""
  check_rules(boxed_tree, mesh, rules, required)
  return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, list(rules))


def placed(boxed_tree, mesh: Mesh, rules) -> object:
  """A tree of boxed abstract values (e.g. jax.eval_shape of an init) as ShapeDtypeStructs
  carrying the NamedShardings the rules give them: what orbax restores into and jit compiles
  for."""
  shardings = logical_shardings(boxed_tree, mesh, rules)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      nn.unbox(boxed_tree), shardings)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Per-process numpy batch -> global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
