"""The device mesh and the NamedShardings of parameters, optimizer state and batches."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
  """A (data, fsdp, model) mesh; one size may be -1 to take the remaining devices."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  sizes = {a: int(mesh_config.get(a, 1)) for a in AXES}
  unknown = set(mesh_config.keys()) - set(AXES)
  if unknown:
    raise ValueError(f"Unknown mesh axes {sorted(unknown)}; the mesh axes are {AXES}.")
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ValueError(f"Only one mesh axis may be -1, got {free}.")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if devices.size % fixed:
      raise ValueError(f"config.mesh {sizes}: {devices.size} devices are not divisible by {fixed}.")
    sizes[free[0]] = devices.size // fixed
  if math.prod(sizes.values()) != devices.size:
    raise ValueError(f"config.mesh {sizes} needs {math.prod(sizes.values())} devices but there are "
                     f"{devices.size}; set the sizes so their product is {devices.size} "
                     "(or one of them to -1).")
  return Mesh(devices.reshape([sizes[a] for a in AXES]), AXES)


def batch_ways(mesh: Mesh) -> int:
  """How many ways the batch is split: the product of the batch axes."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch(global_batch_size: int, mesh: Mesh) -> None:
  ways = batch_ways(mesh)
  if global_batch_size % ways or global_batch_size % jax.process_count():
    raise ValueError(
        f"config.input.global_batch_size={global_batch_size} must be divisible by the "
        f"{ways} devices it is split over (mesh {dict(mesh.shape)}) and by the "
        f"{jax.process_count()} processes; use a multiple of {math.lcm(ways, jax.process_count())}.")


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_shardings(boxed_tree, mesh: Mesh, rules) -> object:
  """NamedShardings for a tree of nn.LogicallyPartitioned (abstract) values."""
  return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, list(rules))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Per-process numpy batch -> global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
