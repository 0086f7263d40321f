"""Maps the parameters of one FLIP onto another: a pretrained checkpoint onto the model of a
later stage (unmasked tuning, another resolution or text length, scanned or unrolled blocks).

- Image resolution / patch grid: nothing to map for the fixed sin-cos position embedding, which
  is recomputed for the grid of every input (flip.models.vit.sincos_2d); a learned one
  (open_clip's) is resampled bicubically, its class slot kept.
- Text length: the learned position embedding is resampled (linear interpolation) when
  config.model.text.max_len differs.
- Block layout: scanned (`encoder/blocks/...` stacked on a leading axis) and unrolled
  (`encoder/blockNN/...`) towers convert into each other.
Anything else that differs (width, depth, patch size, vocabulary, ...) is an error naming the
parameter and both shapes.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np

from flip import errors

RESAMPLED = ("text/pos_embed",)
GRID_RESAMPLED = "image/pos_embed"  # a learned image position embedding (open_clip's)


def path_name(path) -> str:
  """The name ("image/encoder/block00/attn/query/kernel") of a jax tree path."""
  return "/".join(str(getattr(k, "key", k)) for k in path)


def flatten(tree) -> dict:
  """{"image/encoder/...": leaf} of a nested dict of parameters (unflatten's inverse)."""
  return {path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: dict) -> dict:
  """The nested dict of {"image/encoder/...": value} names (path_name's inverse)."""
  tree: dict = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def _layout(encoder: dict) -> str:
  return "scanned" if "blocks" in encoder else "unrolled"


def to_layout(encoder: dict, layout: str) -> dict:
  """An encoder's params in the `layout` ("scanned" or "unrolled")."""
  if _layout(encoder) == layout:
    return encoder
  if layout == "scanned":
    names = sorted(k for k in encoder if re.fullmatch(r"block\d+", k))
    rest = {k: v for k, v in encoder.items() if k not in names}
    return {**rest, "blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *[encoder[n] for n in names])}
  rest = {k: v for k, v in encoder.items() if k != "blocks"}
  depth = jax.tree.leaves(encoder["blocks"])[0].shape[0]
  return {**rest, **{f"block{i:02d}": jax.tree.map(lambda x, i=i: x[i], encoder["blocks"])
                     for i in range(depth)}}


def resample_rows(table: jax.Array, rows: int) -> jax.Array:
  """A [n, d] embedding table linearly resampled to [rows, d] (end points kept)."""
  n = table.shape[0]
  if n == rows:
    return table
  if n == 1:
    return jnp.repeat(table, rows, axis=0)
  pos = np.linspace(0.0, n - 1.0, rows)
  lo = np.floor(pos).astype(np.int32)
  hi = np.minimum(lo + 1, n - 1)
  frac = jnp.asarray(pos - lo, table.dtype)[:, None]
  return table[lo] * (1 - frac) + table[hi] * frac


def resample_grid(table: jax.Array, rows: int) -> jax.Array:
  """A learned [extra + g * g, d] image position embedding (extra = 0 or 1 class slot, kept)
  bicubically resampled to [rows, d] (another resolution or patch grid), as open_clip does."""
  for extra in (0, 1):
    old, new = math.isqrt(table.shape[0] - extra), math.isqrt(rows - extra)
    if old * old == table.shape[0] - extra and new * new == rows - extra and old and new:
      grid = table[extra:].reshape(old, old, -1)
      grid = jax.image.resize(grid, (new, new, grid.shape[-1]), method="bicubic")
      return jnp.concatenate([table[:extra], grid.reshape(new * new, -1)], axis=0)
  raise errors.CheckpointMismatchError(
      f"Cannot resample the image position embedding of {table.shape[0]} rows to {rows}: "
      "neither is a square grid (with or without a class slot).")


def adapt(source: dict, target_abstract: dict, resample: bool = True) -> dict:
  """`source` params reshaped to the structure and shapes of `target_abstract` (ShapeDtypeStructs
  or arrays); raises errors.CheckpointMismatchError, naming the parameters, where they cannot
  be mapped. resample=False: no position embedding is resampled either (imports)."""
  source = dict(source)
  for tower in ("image", "text"):
    if tower in source and tower in target_abstract:
      layout = _layout(target_abstract[tower]["encoder"])
      source[tower] = {**source[tower],
                       "encoder": to_layout(dict(source[tower]["encoder"]), layout)}
  src = {path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(source)[0]}
  tgt_leaves, treedef = jax.tree_util.tree_flatten_with_path(target_abstract)
  tgt = {path_name(p): x for p, x in tgt_leaves}
  missing, extra = sorted(set(tgt) - set(src)), sorted(set(src) - set(tgt))
  if missing or extra:
    raise errors.CheckpointMismatchError(
        "The checkpoint's parameters do not match this model's: "
        + (f"missing from the checkpoint {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
           if missing else "")
        + (f"not in this model {extra[:5]}{' ...' if len(extra) > 5 else ''}; " if extra else "")
        + "set config.model (depth, sizes) to the pretrained model's.")
  out = []
  for path, want in tgt_leaves:
    name, x = path_name(path), src[path_name(path)]
    if x.shape != want.shape:
      if resample and name in RESAMPLED and x.ndim == 2 and x.shape[1] == want.shape[1]:
        x = resample_rows(x, want.shape[0])
      elif resample and name == GRID_RESAMPLED and x.ndim == 2 and x.shape[1] == want.shape[1]:
        x = resample_grid(x, want.shape[0])
      else:
        raise errors.CheckpointMismatchError(
            f"Cannot map the checkpoint's {name} of shape {tuple(x.shape)} onto this model's "
            f"{tuple(want.shape)}: only position embeddings are resampled (text length; a learned "
            "image grid; a fixed sin-cos one is recomputed for any resolution); set "
            "config.model to the pretrained model's sizes (width, heads, depth, vocabulary).")
    out.append(jnp.asarray(x, want.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)
