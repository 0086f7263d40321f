"""Per-device memory of a compiled train step: parameters, optimizer state, temporaries."""

from __future__ import annotations

import dataclasses
import math

import jax

GIB = 1024 ** 3


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded arrays or ShapeDtypeStructs (its largest
  shard: uneven shardings pad)."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) else x.shape
    total += math.prod(shape) * x.dtype.itemsize
  return total


@dataclasses.dataclass(frozen=True)
class MemoryReport:
  """Bytes per device. `peak` = live arguments + outputs not aliased to them + XLA temporaries
  (activations kept for the backward pass, gradients, workspace) + code."""
  params: int
  opt_state: int
  arguments: int
  outputs: int
  aliased: int
  temporaries: int
  code: int

  @property
  def peak(self) -> int:
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.code

  def as_dict(self) -> dict[str, int]:
    return {**dataclasses.asdict(self), "peak": self.peak}

  def __str__(self) -> str:
    gib = lambda b: f"{b / GIB:.2f} GiB"  # noqa: E731
    return (f"params {gib(self.params)}, optimizer state {gib(self.opt_state)}, "
            f"temporaries {gib(self.temporaries)}, peak {gib(self.peak)} per device")


def report(compiled: jax.stages.Compiled, abstract_state) -> MemoryReport | None:
  """The per-device memory of a compiled train step whose first argument is the train state
  (None where the backend does not report compiled memory)."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return MemoryReport(
      params=per_device_bytes(abstract_state.params),
      opt_state=per_device_bytes(abstract_state.opt_state),
      arguments=stats.argument_size_in_bytes, outputs=stats.output_size_in_bytes,
      aliased=stats.alias_size_in_bytes, temporaries=stats.temp_size_in_bytes,
      code=stats.generated_code_size_in_bytes)


def fit_batch(fixed: float, per_sample: float, memory: float, fraction: float = 0.85,
              multiple: int = 8, cap: int = 4096) -> int:
  """The largest batch, a multiple of `multiple` and at most `cap`, with
  fixed + per_sample * batch <= fraction * memory (0: not even `multiple` samples fit)."""
  fitting = int((fraction * memory - fixed) // per_sample) if per_sample > 0 else cap
  return max(0, min(cap, fitting) // multiple * multiple)
