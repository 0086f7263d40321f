"""The safetensors file format (what model hubs and open_clip use), read and written with numpy.

A file is an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}, "__metadata__": {str: str}} and the raw little-endian tensor bytes. bfloat16
tensors are read through ml_dtypes (a JAX dependency) and returned as float32.
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

from flip import errors

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 << 20


def read(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(tensors, metadata) of a .safetensors file; floating tensors as float32.

  errors.DataError, naming the file, if it is not a safetensors file or is truncated.
  """
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise errors.DataError(f"{path} is not a safetensors file (only {size} bytes).")
    (length,) = struct.unpack("<Q", head)
    if not 2 <= length <= min(_MAX_HEADER, size - 8):
      raise errors.DataError(f"{path} is not a safetensors file (no valid header).")
    try:
      header = json.loads(f.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError):
      raise errors.DataError(
          f"{path} is not a safetensors file (its header is not JSON).") from None
    data = f.read()
  metadata = header.pop("__metadata__", None) or {}
  tensors = {}
  for name, info in header.items():
    try:
      dtype = np.dtype(_DTYPES[info["dtype"]])
      begin, end = info["data_offsets"]
      shape = tuple(info["shape"])
    except (KeyError, TypeError, ValueError):
      raise errors.DataError(f"{path}: tensor {name!r} has a malformed header entry "
                             f"{info!r}.") from None
    if end > len(data):
      raise errors.DataError(f"{path} is truncated: tensor {name!r} ends at byte {end} of the "
                             f"data but the file holds {len(data)}; download it again.")
    array = np.frombuffer(data, dtype, count=(end - begin) // dtype.itemsize, offset=begin)
    if array.size != int(np.prod(shape)):
      raise errors.DataError(f"{path}: tensor {name!r} has {array.size} values for shape {shape}.")
    array = array.reshape(shape)
    tensors[name] = array.astype(np.float32) if np.issubdtype(dtype, np.floating) or \
        dtype == ml_dtypes.bfloat16 else array.copy()
  return tensors, metadata


def write(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
          ) -> None:
  """Writes `tensors` (numpy arrays, names sorted) to `path` as safetensors."""
  header, chunks, offset = {}, [], 0
  for name in sorted(tensors):
    array = np.asarray(tensors[name]).copy(order="C")  # (ascontiguousarray makes 0-d 1-d)
    if array.dtype not in _NAMES:
      raise TypeError(f"safetensors cannot hold {name!r} of dtype {array.dtype}.")
    raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    header[name] = dict(dtype=_NAMES[array.dtype], shape=list(array.shape),
                        data_offsets=[offset, offset + len(raw)])
    chunks.append(raw)
    offset += len(raw)
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
  blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for raw in chunks:
      f.write(raw)
  os.replace(tmp, path)
