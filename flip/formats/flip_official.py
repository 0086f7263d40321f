"""The released FLIP models (facebookresearch/flip, JAX/t5x): checkpoints in and out.

The paper's authors released two models trained on (face-blurred) LAION-2B, as zips of t5x
checkpoint directories (a msgpack index, `checkpoint`, beside one zarr v2 array directory per
parameter):
  flip_large16_laion2b: ViT-L/16 image tower (1024 wide, 24 blocks, 16 heads), text tower 768
    wide, 12 blocks, 12 heads, embeddings 768;
    https://dl.fbaipublicfiles.com/flip/flip_large16_laion2b_v2.zip
  flip_huge14_laion2b: ViT-H/14 image tower (1280 wide, 32 blocks, 16 heads of 80), text tower
    1024 wide, 24 blocks, 16 heads, embeddings 1024;
    https://dl.fbaipublicfiles.com/flip/flip_huge14_laion2b_v2.zip
Published ImageNet-1k zero-shot top-1 at 224 px (the README's table, LAION-2B, 25.6B samples):
76.6 (L/16) and 78.8 (H/14); the released face-blurred models: 76.4 and 78.5. Both: MLP ratio 4,
vocabulary 30523 (BERT uncased's 30522 word-pieces + one out-of-vocabulary bucket), text length 32.
The weights are CC-BY-NC 4.0 (non-commercial), as is the released code; nothing of the code is
used here.

How the released model differs from this codebase's default FLIP model (config_lib.base_config;
`apply` sets all of it):
- Image tower: a learned class token (config.model.image.class_token), prepended after masking
  (never masked) and without any position embedding; the default has no class token.
- Image pooling: the mean over all 1 + L tokens, the class token included, after the final
  LayerNorm (pool="mean" with a class token); the default averages the L patch tokens.
- MLP activation: GELU's tanh approximation (flax's default, config.model.act="gelu_tanh");
  the default is the exact (erf) GELU.
- Text attention: no padding mask (pad_mask=False): the [PAD] tokens (id 0) are attended to, so
  the result depends on the padding and captions must be padded to exactly 32 tokens; the
  default masks padding out.
- Text pooling: the first token after the final LayerNorm (pool="first"); no [CLS] is prepended,
  so it is the first word-piece of the caption ([PAD] for an empty one); the default takes the
  mean of the non-padding tokens.
- Tokenizer: tf.text BertTokenizer(lower_case=True) on BERT's uncased vocabulary, no [CLS] /
  [SEP], the first 32 word-pieces, padded with 0 (config.input.tokenizer="flip_official"); the
  default wordpiece tokenizer adds [CLS] ... [SEP]. Vocabulary 30523 rows (row 30522 is never
  looked up) instead of 30522.
- Sizes: ViT-L/16 + 768-wide text or ViT-H/14 + 1024-wide text (above); the default is
  ViT-B/16, a 512-wide 8-head text tower and 512-d embeddings.
The same as the default: pre-LN blocks, LayerNorm eps 1e-6 with scale and bias, biases on the
patch embedding, q/k/v/out and MLP layers, no LayerNorm before the blocks, fixed 2-D sin-cos
image positions (MAE's layout: columns in the first half, rows in the second, sin before cos;
the checkpoint stores the table as `pos_embedding` [1, 1 + L, W] with a zero class row, computed
in float32: within ~1e-6 of ours), learned text positions, bias-free projections, the
log-temperature initialised at log(1/0.07) and clipped to [0, log 100]. Negligible: the
released L2 normalisation is z / (|z| + 1e-8), ours z / max(|z|, 1e-6).
Not part of the model, but of reproducing the published numbers: the released evaluation crops
the centred square of the full short side and resizes it with TF1's legacy bicubic
(tf.compat.v1.image.resize_bicubic, 224 px), ImageNet mean/std; zero-shot classifiers average
the 7 "short" CLIP templates; pretraining used mask ratio 0.5.

Storage (layout only): the patch embedding is a conv kernel [p, p, 3, W]; attention kernels are
flat [W, W] (column h * head_dim + d; `out`'s rows likewise), their biases [W]; the class token
[1, 1, W]; text positions [1, 32, Wt]; logit_scale [1]. `to_params` / `from_params` map these
onto this codebase's unrolled parameter tree and back, checking every name and shape;
`read_checkpoint` / `write_checkpoint` read and write the t5x directories with numpy and msgpack
only (no TensorStore).
"""

from __future__ import annotations

import glob
import gzip
import json
import math
import os
import re
import zlib
from typing import Any, Iterator

import ml_collections
import msgpack
import numpy as np

from flip import errors
from flip.models import convert

# The released models' sizes (configs/cfg_flip_large*.py and cfg_flip_huge14*.py).
MODELS: dict[str, dict[str, int]] = {
    "flip_large16_laion2b": dict(
        image_size=224, patch_size=16, image_width=1024, image_depth=24, image_heads=16,
        image_mlp_dim=4096, text_width=768, text_depth=12, text_heads=12, text_mlp_dim=3072,
        vocab_size=30523, text_len=32, embed_dim=768),
    "flip_huge14_laion2b": dict(
        image_size=224, patch_size=14, image_width=1280, image_depth=32, image_heads=16,
        image_mlp_dim=5120, text_width=1024, text_depth=24, text_heads=16, text_mlp_dim=4096,
        vocab_size=30523, text_len=32, embed_dim=1024),
}
URLS = {
    "flip_large16_laion2b": "https://dl.fbaipublicfiles.com/flip/flip_large16_laion2b_v2.zip",
    "flip_huge14_laion2b": "https://dl.fbaipublicfiles.com/flip/flip_huge14_laion2b_v2.zip",
}
# ImageNet-1k zero-shot top-1 (%) of the released (face-blurred LAION-2B) weights, README.md.
ZERO_SHOT_TOP1 = {"flip_large16_laion2b": 76.4, "flip_huge14_laion2b": 78.5}
SIZE_KEYS = tuple(MODELS["flip_large16_laion2b"])
HEAD_KEYS = ("image_heads", "text_heads")

LN_EPS = 1e-6
T5X_VERSION = 3  # t5x's checkpoint format version (bfloat16 stored natively)
CHUNK_ELEMENTS = 2 ** 24  # t5x: chunks of at most 64 MiB of float32
_POS = "img_encoder/posembed_encoder/pos_embedding"
_EXT_NDARRAY, _EXT_NPSCALAR = 1, 3  # flax.serialization's msgpack ExtType codes
_CHUNKED = "__msgpack_chunked_array__"


# ---------------------------------------------------------------------------------------------
# Reading and writing t5x checkpoint directories.


def _ext_hook(code: int, data: bytes) -> Any:
  if code not in (_EXT_NDARRAY, _EXT_NPSCALAR):
    return msgpack.ExtType(code, data)
  shape, dtype, buffer = msgpack.unpackb(data, raw=True)
  dtype = dtype.decode() if isinstance(dtype, bytes) else dtype
  try:
    arr = np.frombuffer(buffer, dtype=np.dtype(dtype)).reshape(shape)
  except (TypeError, ValueError) as e:
    raise errors.DataError(f"An inline array of dtype {dtype!r} cannot be read ({e}): only "
                           "numpy dtypes are supported.") from None
  return arr[()] if code == _EXT_NPSCALAR else arr


def _ext_pack(x: Any) -> msgpack.ExtType:
  if isinstance(x, np.ndarray):
    payload = msgpack.packb((list(x.shape), x.dtype.name, np.ascontiguousarray(x).tobytes()),
                            use_bin_type=True)
    return msgpack.ExtType(_EXT_NDARRAY, payload)
  if isinstance(x, np.generic):
    payload = msgpack.packb(((), x.dtype.name, x.tobytes()), use_bin_type=True)
    return msgpack.ExtType(_EXT_NPSCALAR, payload)
  raise TypeError(f"Cannot serialise {type(x).__name__} in a t5x checkpoint index.")


def _is_spec(x: Any) -> bool:
  return isinstance(x, dict) and {"driver", "kvstore", "metadata"} <= set(x)


def _not_t5x(path: str) -> str:
  return (f"{path} is not a t5x checkpoint directory (no 'checkpoint' file): pass the unzipped "
          "folder.")


def find_index(path: str) -> str:
  """The `checkpoint` (msgpack index) file of a t5x checkpoint: `path` itself, path/checkpoint,
  the highest path/checkpoint_<step>/checkpoint, or one of these one folder down (a zip that
  unpacks into a folder of its own)."""
  if not os.path.exists(path):
    raise errors.NotFoundError(f"{path} does not exist: pass the unzipped folder of a released "
                               "FLIP checkpoint.")
  if os.path.isfile(path):
    if os.path.basename(path) == "checkpoint":
      return path
    raise errors.DataError(_not_t5x(path))

  def in_dir(d: str) -> str | None:
    if os.path.isfile(os.path.join(d, "checkpoint")):
      return os.path.join(d, "checkpoint")
    steps = []
    for f in glob.glob(os.path.join(glob.escape(d), "checkpoint_*", "checkpoint")):
      m = re.fullmatch(r"checkpoint_(\d+)", os.path.basename(os.path.dirname(f)))
      if m:
        steps.append((int(m.group(1)), f))
    return max(steps)[1] if steps else None

  found = in_dir(path)
  if found:
    return found
  below = [f for d in sorted(os.listdir(path)) if os.path.isdir(os.path.join(path, d))
           for f in [in_dir(os.path.join(path, d))] if f]
  if len(below) == 1:
    return below[0]
  if below:
    raise errors.DataError(f"{path} holds several t5x checkpoints ({', '.join(below)}): pass "
                           "the folder of one.")
  raise errors.NotFoundError(_not_t5x(path))


def _load_index(index: str) -> dict:
  with open(index, "rb") as f:
    data = f.read()
  try:
    tree = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
  except errors.FlipError:
    raise
  except Exception as e:  # msgpack raises ValueError subclasses, TypeError, ...
    raise errors.DataError(f"{index} is not a t5x checkpoint index (msgpack could not read it: "
                           f"{type(e).__name__}: {e}): re-extract the download.") from None
  if isinstance(tree, dict) and "version" in tree and "optimizer" in tree:
    tree = tree["optimizer"]
  if not isinstance(tree, dict) or not isinstance(tree.get("target"), dict):
    raise errors.DataError(f"{index} is msgpack but not a t5x checkpoint index (no 'target' "
                           "parameters): pass a t5x checkpoint of the released FLIP models.")
  return tree


def _unchunk(x: dict, name: str) -> np.ndarray:
  """A flax msgpack array split into {"__msgpack_chunked_array__", "shape", "chunks"}."""
  try:
    shape = [int(x["shape"][k]) for k in sorted(x["shape"], key=int)]
    chunks = [np.asarray(x["chunks"][k]).reshape(-1) for k in sorted(x["chunks"], key=int)]
    return np.concatenate(chunks).reshape(shape)
  except (KeyError, TypeError, ValueError) as e:
    raise errors.DataError(f"Parameter {name}: its chunked inline array is malformed ({e}): "
                           "re-extract the download.") from None


def _spec_path(spec: dict, name: str) -> str:
  kvstore = spec.get("kvstore")
  if not isinstance(kvstore, dict):
    raise errors.DataError(f"Parameter {name}: its TensorStore spec has no kvstore: {spec}.")
  driver = kvstore.get("driver")
  if driver not in ("file", "gfile", "gcs"):
    raise errors.DataError(f"Parameter {name} is stored with the TensorStore kvstore driver "
                           f"{driver!r} (a newer Orbax/OCDBT checkpoint?): only the released "
                           "t5x layout (one zarr folder per parameter) is supported.")
  if spec.get("driver") != "zarr":
    raise errors.DataError(f"Parameter {name} is stored with the TensorStore driver "
                           f"{spec.get('driver')!r}: only zarr (t5x's) is supported.")
  rel = kvstore.get("path", spec.get("path"))
  if not isinstance(rel, str) or not rel.strip("/"):
    raise errors.DataError(f"Parameter {name}: its TensorStore spec names no path: {spec}.")
  rel = rel.rstrip("/")
  if os.path.isabs(rel) or "://" in rel:  # an absolute path: the folder beside `checkpoint`
    rel = rel.rsplit("/", 1)[-1]
  return rel


def _decompress(raw: bytes, compressor: str | None) -> bytes:
  if compressor is None:
    return raw
  if compressor == "gzip":
    return gzip.decompress(raw)
  return zlib.decompress(raw)


def read_zarr(directory: str, name: str = "array", missing_chunks: str = "error"
              ) -> np.ndarray:
  """A zarr v2 array directory (.zarray + chunk files; no, gzip or zlib compression) as numpy.

  missing_chunks: "error" (the released checkpoints store every chunk) or "zeros" (zarr's
  meaning of an absent chunk with fill_value null: TensorStore may skip writing all-zero ones).
  """
  if not os.path.isdir(directory):
    raise errors.NotFoundError(f"Parameter {name}: its array directory {directory} is missing: "
                               "re-extract the checkpoint zip (every parameter is a folder "
                               "beside 'checkpoint').")
  meta_path = os.path.join(directory, ".zarray")
  if not os.path.isfile(meta_path):
    raise errors.NotFoundError(f"Parameter {name}: {meta_path} is missing: re-extract the "
                               "checkpoint zip.")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
    shape = [int(s) for s in meta["shape"]]
    chunks = [int(c) for c in meta["chunks"]]
    dtype = np.dtype(meta["dtype"])
  except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
    raise errors.DataError(f"Parameter {name}: {meta_path} is not zarr v2 array metadata "
                           f"({type(e).__name__}: {e}): re-extract the checkpoint zip.") from None
  if meta.get("zarr_format") != 2:
    raise errors.DataError(f"Parameter {name}: {meta_path} has zarr_format "
                           f"{meta.get('zarr_format')!r}: only zarr v2 (t5x's) is supported.")
  if meta.get("filters"):
    raise errors.DataError(f"Parameter {name}: {meta_path} has zarr filters "
                           f"{meta['filters']}: only unfiltered arrays (t5x's) are supported.")
  order = meta.get("order", "C")
  if order not in ("C", "F") or len(chunks) != len(shape) or min(chunks, default=1) < 1:
    raise errors.DataError(f"Parameter {name}: {meta_path} has an invalid order or chunk shape "
                           f"({order!r}, chunks {chunks} for shape {shape}).")
  compressor = (meta.get("compressor") or {}).get("id")
  if compressor not in (None, "gzip", "zlib"):
    raise errors.DataError(f"Parameter {name}: {meta_path} uses the {compressor!r} compressor: "
                           "only gzip and zlib (t5x's) are supported.")
  if missing_chunks not in ("error", "zeros"):
    raise errors.ConfigError(f"missing_chunks={missing_chunks!r}: choose 'error' or 'zeros'.")
  separator = meta.get("dimension_separator") or "."
  out = np.zeros(shape, dtype)
  chunk_bytes = math.prod(chunks) * dtype.itemsize
  grid = [-(-s // c) for s, c in zip(shape, chunks)]
  for idx in np.ndindex(*grid):
    path = os.path.join(directory, separator.join(map(str, idx)) if idx else "0")
    if not os.path.isfile(path):
      if missing_chunks == "zeros":
        continue
      raise errors.NotFoundError(f"Parameter {name}: chunk file {path} is missing: re-extract "
                                 "the checkpoint zip.")
    with open(path, "rb") as f:
      raw = f.read()
    try:
      raw = _decompress(raw, compressor)
    except (EOFError, OSError, zlib.error) as e:
      raise errors.DataError(f"Parameter {name}: chunk {path} is truncated or corrupt "
                             f"({compressor}: {e}): re-extract the checkpoint zip.") from None
    if len(raw) != chunk_bytes:
      raise errors.DataError(f"Parameter {name}: chunk {path} holds {len(raw)} bytes, not the "
                             f"{chunk_bytes} of a {chunks} chunk of {dtype.str} (.zarray shape "
                             f"{shape}): re-extract the checkpoint zip.")
    block = np.frombuffer(raw, dtype).reshape(chunks, order=order)
    where = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape))
    out[where] = block[tuple(slice(0, w.stop - w.start) for w in where)]
  return out


def _walk(tree: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict) and not _is_spec(value) and _CHUNKED not in value:
      yield from _walk(value, name + "/")
    else:
      yield name, value


def read_checkpoint(directory: str, missing_chunks: str = "error") -> dict[str, np.ndarray]:
  """The parameters of a t5x checkpoint directory (the released FLIP layout) as float32 numpy,
  by "/"-joined name under `target` (e.g. "img_encoder/embedding/kernel"); the optimizer state
  is not read. `directory` may also be the model folder above checkpoint_<step>/ (see
  find_index); missing_chunks: see read_zarr."""
  index = find_index(directory)
  root = os.path.dirname(index)
  tree = _load_index(index)
  out: dict[str, np.ndarray] = {}
  for name, leaf in _walk(tree["target"]):
    if _is_spec(leaf):
      array_dir = os.path.join(root, _spec_path(leaf, name))
      arr = read_zarr(array_dir, name, missing_chunks)
      want = leaf["metadata"].get("shape") if isinstance(leaf["metadata"], dict) else None
      if want is not None and list(arr.shape) != [int(s) for s in want]:
        raise errors.DataError(f"Parameter {name}: {array_dir}/.zarray has shape "
                               f"{list(arr.shape)} but the index 'checkpoint' says "
                               f"{list(want)}: re-extract the checkpoint zip.")
    elif isinstance(leaf, dict) and _CHUNKED in leaf:
      arr = _unchunk(leaf, name)
    elif isinstance(leaf, (np.ndarray, np.generic, int, float)) and not isinstance(leaf, bool):
      arr = np.asarray(leaf)
    elif isinstance(leaf, dict) and not leaf:
      continue  # an empty subtree
    else:
      raise errors.DataError(f"Parameter {name} in {index} is neither an array nor a "
                             f"TensorStore spec ({type(leaf).__name__}): pass a t5x checkpoint "
                             "of the released FLIP models.")
    if arr.dtype.kind not in "fiub":
      raise errors.DataError(f"Parameter {name} has dtype {arr.dtype}: expected float32.")
    out[name] = np.asarray(arr, np.float32, order="C")
  if not out:
    raise errors.DataError(f"{index} holds no parameters under 'target'.")
  return out


def choose_chunks(shape: tuple[int, ...], max_elements: int = CHUNK_ELEMENTS) -> list[int]:
  """t5x's chunk shape: divisors of `shape`, the largest dimension shrunk to its next smaller
  divisor first, until the chunk has at most max_elements elements."""
  divisors = [[d for d in range(1, n + 1) if n % d == 0] for n in shape]
  while math.prod(d[-1] for d in divisors) > max_elements:
    largest = max(range(len(shape)), key=lambda i: divisors[i][-1])
    if divisors[largest][-1] == 1:
      break
    divisors[largest].pop()
  return [d[-1] for d in divisors]


def _write_zarr(directory: str, arr: np.ndarray, chunks: list[int]) -> None:
  os.makedirs(directory, exist_ok=True)
  meta = {"chunks": chunks, "compressor": {"id": "gzip", "level": 1},
          "dimension_separator": ".", "dtype": arr.dtype.str, "fill_value": None,
          "filters": None, "order": "C", "shape": list(arr.shape), "zarr_format": 2}
  with open(os.path.join(directory, ".zarray"), "w") as f:
    json.dump(meta, f, sort_keys=True)
  grid = [s // c for s, c in zip(arr.shape, chunks)]  # the chunks divide the shape
  for idx in np.ndindex(*grid):
    where = tuple(slice(i * c, (i + 1) * c) for i, c in zip(idx, chunks))
    name = ".".join(map(str, idx)) if idx else "0"
    with open(os.path.join(directory, name), "wb") as f:
      f.write(gzip.compress(np.ascontiguousarray(arr[where]).tobytes(), compresslevel=1,
                            mtime=0))


def write_checkpoint(directory: str, params: dict[str, np.ndarray], step: int = 0,
                     chunk_elements: int = CHUNK_ELEMENTS) -> None:
  """Writes flat "/"-named parameters (the released names, see from_params) as a t5x checkpoint
  directory like the released ones: `directory` plays checkpoint_<step>/, holding the msgpack
  index `checkpoint` ({"version": 3, "optimizer": {"target": ..., "state": {"step"}}}; FLIP's
  own restore needs the `state` entry) and one gzip zarr folder target.<name with dots>/ per
  parameter (float32, t5x's chunking with at most chunk_elements per chunk)."""
  os.makedirs(directory, exist_ok=True)
  target: dict = {}
  for name, value in params.items():
    parts = name.split("/")
    if not all(parts):
      raise errors.ConfigError(f"Parameter name {name!r} has an empty component.")
    arr = np.asarray(value, np.float32).astype("<f4")
    chunks = choose_chunks(arr.shape, chunk_elements)
    rel = "target." + ".".join(parts)
    _write_zarr(os.path.join(directory, rel), arr, chunks)
    node = target
    for part in parts[:-1]:
      node = node.setdefault(part, {})
      if _is_spec(node):
        raise errors.ConfigError(f"Parameter {name!r} is nested in another parameter.")
    node[parts[-1]] = {
        "driver": "zarr", "dtype": "float32",
        # FLIP wrote GCS specs with a dummy bucket; TensorStore keeps the relative path in
        # kvstore.path, which FLIP's restore reads.
        "kvstore": {"bucket": "t5x-dummy-bucket", "driver": "gcs", "path": rel},
        "metadata": {"chunks": chunks, "compressor": {"id": "gzip"}, "shape": list(arr.shape)}}
  state = {"step": np.asarray(step, np.int32)}
  index = {"version": T5X_VERSION, "optimizer": {"target": target, "state": state}}
  with open(os.path.join(directory, "checkpoint"), "wb") as f:
    f.write(msgpack.packb(index, default=_ext_pack, use_bin_type=True))


# ---------------------------------------------------------------------------------------------
# The released model's parameters and this codebase's.


def sincos_table(width: int, grid: int) -> np.ndarray:
  """The released image position table [1, 1 + grid**2, width] (a zero class row first),
  computed in float32 as the release did (MAE's layout: columns, then rows; sin, then cos)."""
  if width % 4:
    raise errors.ConfigError(f"The sin-cos position table needs a width divisible by 4, got "
                             f"{width}.")
  quarter = width // 4
  omega = np.arange(quarter, dtype=np.float32) / np.float32(quarter)
  omega = (np.float32(1.0) / np.float32(10000.0) ** omega).astype(np.float32)
  rows, cols = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32),
                           indexing="ij")

  def embed(pos):
    angles = np.outer(pos.reshape(-1), omega).astype(np.float32)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  table = np.concatenate([embed(cols), embed(rows)], axis=1)
  return np.concatenate([np.zeros((1, width), np.float32), table])[None].astype(np.float32)


def _grid(sizes: dict) -> int:
  if sizes["image_size"] % sizes["patch_size"]:
    raise errors.ConfigError(f"image_size {sizes['image_size']} is not a multiple of the patch "
                             f"size {sizes['patch_size']}.")
  return sizes["image_size"] // sizes["patch_size"]


def _check_sizes(sizes: dict) -> None:
  missing = [k for k in SIZE_KEYS if k not in sizes]
  if missing:
    raise errors.ConfigError(f"FLIP model sizes lack {missing}: use an entry of "
                             f"flip_official.MODELS {sorted(MODELS)} or detect().")
  for tower in ("image", "text"):
    width, heads = sizes[f"{tower}_width"], sizes[f"{tower}_heads"]
    if heads < 1 or width % heads:
      raise errors.ConfigError(f"{tower}_width {width} is not divisible by {tower}_heads "
                               f"{heads}.")


# (released name suffix, our path suffix, released shape, our shape) of one block.
def _block(width: int, heads: int, mlp: int) -> list[tuple[str, str, tuple, tuple]]:
  hd = width // heads
  out = []
  for ln_rel, ln_ours in (("LayerNorm_0", "ln1"), ("LayerNorm_1", "ln2")):
    out += [(f"{ln_rel}/{p}", f"{ln_ours}/{p}", (width,), (width,)) for p in ("scale", "bias")]
  attn = "MultiHeadDotProductAttention_0"
  for p in ("query", "key", "value"):
    out += [(f"{attn}/{p}/kernel", f"attn/{p}/kernel", (width, width), (width, heads, hd)),
            (f"{attn}/{p}/bias", f"attn/{p}/bias", (width,), (heads, hd))]
  out += [(f"{attn}/out/kernel", "attn/out/kernel", (width, width), (heads, hd, width)),
          (f"{attn}/out/bias", "attn/out/bias", (width,), (width,)),
          ("MlpBlock_0/Dense_0/kernel", "mlp/fc1/kernel", (width, mlp), (width, mlp)),
          ("MlpBlock_0/Dense_0/bias", "mlp/fc1/bias", (mlp,), (mlp,)),
          ("MlpBlock_0/Dense_1/kernel", "mlp/fc2/kernel", (mlp, width), (mlp, width)),
          ("MlpBlock_0/Dense_1/bias", "mlp/fc2/bias", (width,), (width,))]
  return out


def mapping(sizes: dict) -> list[tuple[str, str, tuple, tuple]]:
  """(released name, our "/"-joined name, released shape, our shape) of every parameter that
  has a counterpart (all but the fixed image position table)."""
  _check_sizes(sizes)
  p, w, wt, e = (sizes["patch_size"], sizes["image_width"], sizes["text_width"],
                 sizes["embed_dim"])
  out = [("img_encoder/embedding/kernel", "image/patch_embed/kernel", (p, p, 3, w),
          (p * p * 3, w)),
         ("img_encoder/embedding/bias", "image/patch_embed/bias", (w,), (w,)),
         ("img_encoder/cls", "image/cls_token", (1, 1, w), (w,)),
         ("txt_encoder/token_embedding/embedding", "text/token_embed/embedding",
          (sizes["vocab_size"], wt), (sizes["vocab_size"], wt)),
         ("txt_encoder/posembed_encoder/pos_embedding", "text/pos_embed",
          (1, sizes["text_len"], wt), (sizes["text_len"], wt)),
         ("img_mlp1/kernel", "image_proj/kernel", (w, e), (w, e)),
         ("txt_mlp1/kernel", "text_proj/kernel", (wt, e), (wt, e)),
         ("logit_scale", "logit_scale", (1,), ())]
  for rel, ours in (("img_encoder", "image"), ("txt_encoder", "text")):
    tower = "image" if ours == "image" else "text"
    width, depth = sizes[f"{tower}_width"], sizes[f"{tower}_depth"]
    block = _block(width, sizes[f"{tower}_heads"], sizes[f"{tower}_mlp_dim"])
    for i in range(depth):
      out += [(f"{rel}/Transformer/encoderblock_{i:02d}/{a}", f"{ours}/encoder/block{i:02d}/{b}",
               sa, sb) for a, b, sa, sb in block]
    out += [(f"{rel}/Transformer/encoder_norm/{q}", f"{ours}/encoder/ln_final/{q}", (width,),
             (width,)) for q in ("scale", "bias")]
  return out


def expected_shapes(sizes: dict) -> dict[str, tuple[int, ...]]:
  """The released checkpoint's parameter names -> shapes for `sizes`."""
  out = {rel: shape for rel, _, shape, _ in mapping(sizes)}
  out[_POS] = (1, 1 + _grid(sizes) ** 2, sizes["image_width"])
  return out


def _check(got: dict[str, tuple], want: dict[str, tuple], what: str, hint: str) -> None:
  missing = sorted(set(want) - set(got))
  unknown = sorted(set(got) - set(want))
  if missing or unknown:
    parts = []
    for label, names in (("missing", missing), ("unknown", unknown)):
      if names:
        parts.append(f"{label} {names[:4]}{' ...' if len(names) > 4 else ''} "
                     f"({len(names)} in all)")
    raise errors.CheckpointMismatchError(f"{what}: {'; '.join(parts)}. {hint}")
  wrong = [f"{k} has shape {got[k]} but the model has {want[k]}" for k in want
           if tuple(got[k]) != tuple(want[k])]
  if wrong:
    raise errors.CheckpointMismatchError(
        f"{what}: {'; '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''} ({len(wrong)} in "
        f"all). {hint}")


def to_params(flat: dict[str, np.ndarray], sizes: dict) -> dict:
  """This codebase's parameters (unrolled blocks, numpy float32) of a released checkpoint's
  flat parameters (read_checkpoint), checking every name and shape and that the stored image
  position table is the fixed sin-cos one the model computes."""
  _check({k: tuple(np.shape(v)) for k, v in flat.items()}, expected_shapes(sizes),
         "The checkpoint does not fit the released FLIP model of these sizes",
         "Check --model (flip_large16_laion2b / flip_huge14_laion2b) or let detect() read the "
         "sizes.")
  stored = np.asarray(flat[_POS], np.float32)
  diff = float(np.max(np.abs(stored - sincos_table(sizes["image_width"], _grid(sizes)))))
  if not diff <= 1e-4:
    raise errors.CheckpointMismatchError(
        f"{_POS} is not the fixed 2-D sin-cos table (max |difference| {diff:.3g}), which this "
        "model computes instead of storing: the checkpoint is not a released FLIP model.")
  ours = {b: np.asarray(np.asarray(flat[a], np.float32).reshape(sb), order="C")
          for a, b, _, sb in mapping(sizes)}
  return convert.unflatten(ours)


def from_params(params: dict, sizes: dict) -> dict[str, np.ndarray]:
  """The released checkpoint's flat parameters (float32 numpy) of this codebase's parameters
  (unrolled blocks, config.model.scan_layers=False) of the model `apply(config, sizes)` makes;
  the inverse of to_params (the position table is the fixed one)."""
  flat = convert.flatten(params)
  pairs = mapping(sizes)
  _check({k: tuple(np.shape(v)) for k, v in flat.items()}, {b: sb for _, b, _, sb in pairs},
         "The parameters do not fit the released FLIP model of these sizes",
         "Export the unrolled parameters (config.model.scan_layers=False) of the model that "
         "flip_official.apply(config, sizes) configures.")
  out = {a: np.asarray(np.asarray(flat[b], np.float32).reshape(sa), order="C")
         for a, b, sa, _ in pairs}
  out[_POS] = sincos_table(sizes["image_width"], _grid(sizes))
  return out


def model_sizes(model: str) -> dict[str, int]:
  """The sizes of released model `model` (a key of MODELS)."""
  if model not in MODELS:
    raise errors.ConfigError(f"Unknown released FLIP model {model!r}: use one of "
                             f"{sorted(MODELS)}.")
  return dict(MODELS[model])


def _shape(flat: dict[str, np.ndarray], name: str) -> tuple[int, ...]:
  if name not in flat:
    raise errors.CheckpointMismatchError(f"The checkpoint has no {name}: it is not a released "
                                         "FLIP (t5x) checkpoint.")
  return tuple(np.shape(flat[name]))


def _depth(flat: dict[str, np.ndarray], tower: str) -> int:
  pattern = re.compile(rf"{tower}/Transformer/encoderblock_(\d+)/")
  found = {int(m.group(1)) for name in flat for m in [pattern.match(name)] if m}
  return max(found) + 1 if found else 0


def detect(flat: dict[str, np.ndarray], model: str | dict | None = None) -> dict[str, int]:
  """The sizes (MODELS' keys) of a released checkpoint's flat parameters, read from their
  shapes. The numbers of heads are not in the shapes: they are those of the MODELS entry with
  the same sizes, or come from `model` (a MODELS name, checked against the shapes, or a dict
  with at least image_heads and text_heads)."""
  kernel = _shape(flat, "img_encoder/embedding/kernel")
  if len(kernel) != 4 or kernel[0] != kernel[1] or kernel[2] != 3:
    raise errors.CheckpointMismatchError(f"img_encoder/embedding/kernel has shape {kernel}, not "
                                         "the [p, p, 3, width] of a released FLIP model.")
  patch, width = kernel[0], kernel[3]
  pos = _shape(flat, _POS)
  grid = math.isqrt(max(pos[1] - 1, 0)) if len(pos) == 3 else 0
  if len(pos) != 3 or grid * grid != pos[1] - 1:
    raise errors.CheckpointMismatchError(f"{_POS} has shape {pos}, not the [1, 1 + grid**2, "
                                         "width] of a released FLIP model.")
  vocab, text_width = (_shape(flat, "txt_encoder/token_embedding/embedding") + (0, 0))[:2]
  text_pos = _shape(flat, "txt_encoder/posembed_encoder/pos_embedding")
  embed = _shape(flat, "img_mlp1/kernel")
  sizes = dict(
      image_size=grid * patch, patch_size=patch, image_width=width,
      image_depth=_depth(flat, "img_encoder"),
      image_mlp_dim=_shape(flat, "img_encoder/Transformer/encoderblock_00/MlpBlock_0/Dense_0/"
                                 "kernel")[-1],
      text_width=text_width, text_depth=_depth(flat, "txt_encoder"),
      text_mlp_dim=_shape(flat, "txt_encoder/Transformer/encoderblock_00/MlpBlock_0/Dense_0/"
                                "kernel")[-1],
      vocab_size=vocab, text_len=text_pos[1] if len(text_pos) == 3 else 0,
      embed_dim=embed[-1])
  if isinstance(model, str):
    known = model_sizes(model)
    wrong = [f"{k} {sizes[k]} (the model has {v})" for k, v in known.items()
             if k in sizes and sizes[k] != v]
    if wrong:
      raise errors.CheckpointMismatchError(f"The checkpoint is not {model}: its "
                                           f"{', '.join(wrong)}. Check --model.")
    return known
  if isinstance(model, dict):
    heads = {k: int(model[k]) for k in HEAD_KEYS if k in model}
    if len(heads) < len(HEAD_KEYS):
      raise errors.ConfigError(f"The model sizes given need {list(HEAD_KEYS)} (the numbers of "
                               "attention heads, which the weights do not show).")
    sizes.update(heads)
    _check_sizes(sizes)
    return sizes
  for name, known in MODELS.items():
    if all(known[k] == v for k, v in sizes.items()):
      return dict(known)
  shown = ", ".join(f"{k}={v}" for k, v in sizes.items())
  raise errors.ConfigError(f"The checkpoint's sizes ({shown}) are not those of a released FLIP "
                           f"model ({', '.join(sorted(MODELS))}) and its weights do not show the "
                           "numbers of attention heads: pass --model with them.")


def apply(config: ml_collections.ConfigDict, sizes: dict) -> ml_collections.ConfigDict:
  """Sets config.model (and the input fields the model needs) to the released FLIP model of
  `sizes` (a MODELS entry or detect()'s result)."""
  _check_sizes(sizes)
  ratios = {}
  for tower in ("image", "text"):
    width, mlp = sizes[f"{tower}_width"], sizes[f"{tower}_mlp_dim"]
    ratios[tower] = mlp / width
    if int(width * ratios[tower]) != mlp:
      raise errors.ConfigError(f"{tower} MLP dim {mlp} is not expressible as an mlp_ratio of "
                               f"width {width}.")
  m = config.model
  m.embed_dim = sizes["embed_dim"]
  m.act = "gelu_tanh"
  m.ln_eps = LN_EPS
  m.image.update(dict(
      patch_size=sizes["patch_size"], depth=sizes["image_depth"], width=sizes["image_width"],
      num_heads=sizes["image_heads"], mlp_ratio=ratios["image"], class_token=True,
      posemb="sincos2d", ln_pre=False, patch_bias=True, pool="mean", pixel_stats="imagenet"))
  m.text.update(dict(
      vocab_size=sizes["vocab_size"], depth=sizes["text_depth"], width=sizes["text_width"],
      num_heads=sizes["text_heads"], mlp_ratio=ratios["text"], max_len=sizes["text_len"],
      causal=False, pad_mask=False, pool="first"))
  config.input.image_size = sizes["image_size"]
  config.input.text_len = sizes["text_len"]
  config.input.tokenizer = "flip_official"
  config.input.vocab_path = None
  return config

