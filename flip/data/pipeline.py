"""tf.data input: sources -> check -> decode -> augment -> tokenize -> batch (per process).

Each source's stream is a sequence of *chunks*: every epoch its units (files) are put in a seeded
random order (shard-level shuffle) and taken `cycle_length` at a time; a chunk reads its units
interleaved, shuffles the records with a seeded buffer (sample-level shuffle) and numbers them.
Every record thus has a position (source, epoch, chunk, index) that is a deterministic function
of the seed, and every random choice made for it (crop, flip, caption) is seeded by that position.
The host keeps the position of the last record it consumed (`InputState`, saved with each
checkpoint), so a resumed run continues the stream exactly where it stopped: it re-reads, without
decoding, at most the part of one chunk already consumed, and sees neither repeated nor skipped data.

Unusable records (corrupt or truncated image, missing or empty caption, non-UTF-8 caption, no
image, unreadable file) are dropped, logged with their shard and key, and counted: each batch
carries how many were dropped before each of its records, so the count is exact and resumable.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import math
import os
import re
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from flip import distributed
from flip import errors
from flip import sharding
from flip.data import sources as sources_lib
from flip.data import tokenizer as tokenizer_lib
from flip.data.sources import traced

IMAGENET_MEAN = tf.constant([0.485, 0.456, 0.406]) * 255.0
IMAGENET_STD = tf.constant([0.229, 0.224, 0.225]) * 255.0
MAX_SKIPPED_IN_A_ROW = 10_000
HOST_FIELDS = ("_position", "_skipped", "_key")  # per-record bookkeeping that stays on the host

# ---------------------------------------------------------------------------------------------
# Images.

def image_format(data: tf.Tensor) -> tf.Tensor:
  """'jpeg', 'png', 'gif', 'bmp', 'webp' or '' (unknown), from the leading bytes."""
  head = tf.strings.substr(data, 0, 12) + b"\0" * 12  # padded: substr fails past the end
  checks = [
      ("jpeg", tf.equal(tf.strings.substr(head, 0, 3), b"\xff\xd8\xff")),
      ("png", tf.equal(tf.strings.substr(head, 0, 8), b"\x89PNG\r\n\x1a\n")),
      ("gif", tf.equal(tf.strings.substr(head, 0, 4), b"GIF8")),
      ("bmp", tf.equal(tf.strings.substr(head, 0, 2), b"BM")),
      ("webp", tf.logical_and(tf.equal(tf.strings.substr(head, 0, 4), b"RIFF"),
                              tf.equal(tf.strings.substr(head, 8, 4), b"WEBP"))),
  ]
  out = tf.constant("")
  for name, match in reversed(checks):
    out = tf.where(match, name, out)
  return out


def decode(data: tf.Tensor) -> tf.Tensor:
  """Encoded JPEG/PNG/GIF/BMP/WebP -> uint8 [h, w, 3] (a GIF's first frame); raises if corrupt."""
  return tf.io.decode_image(data, channels=3, expand_animations=False)


def normalize(image: tf.Tensor) -> tf.Tensor:
  return (tf.cast(image, tf.float32) - IMAGENET_MEAN) / IMAGENET_STD


def crop_window(shape: tf.Tensor, seed: tf.Tensor, area_min: float):
  """A crop of area (area_min, 1) and aspect (3/4, 4/3) of an image of `shape`: (begin, size)."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(area_min, 1.0),
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  return begin, size


def random_resized_crop(data: tf.Tensor, seed: tf.Tensor, size: int, area_min: float) -> tf.Tensor:
  """The paper's training crop of an encoded image, bicubic-resized to size x size (float).

  JPEGs decode only the crop window (tf.image.decode_and_crop_jpeg), which is faster.
  """
  def jpeg():
    begin, crop = crop_window(tf.image.extract_jpeg_shape(data), seed, area_min)
    window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
    return tf.image.decode_and_crop_jpeg(data, window, channels=3)

  def other():
    image = decode(data)
    begin, crop = crop_window(tf.shape(image), seed, area_min)
    return tf.slice(image, begin, crop)

  image = tf.cond(tf.equal(image_format(data), "jpeg"), jpeg, other)
  image = tf.image.resize(image, [size, size], method="bicubic")
  return tf.clip_by_value(image, 0.0, 255.0)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """Evaluation transform: resize the short side to `size` (bicubic), then a central crop."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = size / tf.reduce_min(shape)
  new_shape = tf.cast(tf.math.ceil(shape * scale), tf.int32)
  image = tf.image.resize(image, new_shape, method="bicubic")
  top = (new_shape[0] - size) // 2
  left = (new_shape[1] - size) // 2
  return tf.clip_by_value(image[top:top + size, left:left + size], 0.0, 255.0)


# ---------------------------------------------------------------------------------------------
# Captions.

def pick_texts(texts: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
  """One caption per record: [M] strings, each one or several joined by CAPTION_SEPARATOR
  (a TFDS sequence of captions) -> [M] strings, a random one of each (seeded by `seeds` [M, 2])."""
  parts = tf.strings.split(texts, sources_lib.CAPTION_SEPARATOR)
  counts = parts.row_lengths()
  u = tf.cast(_mix(seeds[:, 0] ^ seeds[:, 1]) & 0xFFFFFF, tf.float64) / float(1 << 24)
  index = tf.minimum(tf.cast(u * tf.cast(counts, tf.float64), tf.int64), counts - 1)
  picked = tf.gather(parts.flat_values, parts.row_starts() + tf.maximum(index, 0))
  return tf.where(counts > 0, picked, "")


def text_problem(text: tf.Tensor) -> tf.Tensor:
  """Why a caption is unusable ('' if it is fine): empty, or not valid UTF-8."""
  valid_utf8 = tf.equal(
      tf.strings.length(tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="ignore")),
      tf.strings.length(text))
  empty = tf.equal(tf.strings.length(tf.strings.strip(text)), 0)
  return tf.where(empty, "missing or empty caption",
                  tf.where(valid_utf8, "", "caption is not valid UTF-8"))


# ---------------------------------------------------------------------------------------------
# The per-source stream.

def _mix(x: tf.Tensor) -> tf.Tensor:
  """SplitMix64's finaliser on int64 (wrapping arithmetic): a cheap, vectorised hash."""
  x = (x ^ tf.bitwise.right_shift(x, 30)) * tf.constant(-4658895280553007687, tf.int64)
  x = (x ^ tf.bitwise.right_shift(x, 27)) * tf.constant(-7723592293110705685, tf.int64)
  return x ^ tf.bitwise.right_shift(x, 31)


def _seed(config: ml_collections.ConfigDict, *values) -> tf.Tensor:
  """A stateless-op seed int64[2] from the config's seed and some integers (scalars)."""
  h = tf.constant(config.seed, tf.int64)
  for v in values:
    h = _mix(h + 0x5EED + tf.cast(v, tf.int64))
  return tf.stack([h, _mix(h + 1)])


def record_seeds(seed: int, positions: tf.Tensor) -> tf.Tensor:
  """Seeds for the random choices made for each record, from its position: [M, 4] -> [M, 3, 2]."""
  h = tf.fill(tf.shape(positions)[:1], tf.constant(seed, tf.int64))
  for i in range(4):
    h = _mix(h + 0x5EED + positions[:, i])
  return tf.stack([tf.stack([_mix(h + 2 * j + 1), _mix(h + 2 * j + 2)], axis=-1)
                   for j in range(3)], axis=1)


CHUNK_END = "(end of a group of files)"


def num_chunks(num_units: int, cycle_length: int) -> int:
  return math.ceil(num_units / min(cycle_length, num_units))


def record_stream(source: sources_lib.Source, source_index: int, units: list[str],
                  config: ml_collections.ConfigDict, start: tuple[int, int, int]) -> tf.data.Dataset:
  """(position int64[4], raw record) of one source, from position `start` = (epoch, chunk, index).

  Each chunk ends with a CHUNK_END marker record of index -1.
  """
  inp = config.input
  n = len(units)
  k = min(inp.cycle_length, n)
  chunks = num_chunks(n, k)
  epoch0, chunk0, index0 = start
  first = epoch0 * chunks + chunk0
  units_t = tf.constant(units)

  def chunk(linear):
    epoch, c = linear // chunks, linear % chunks
    order = tf.range(n)
    if inp.shuffle_files:
      order = tf.random.experimental.stateless_shuffle(order, _seed(config, source_index, epoch))
    chunk_units = tf.gather(units_t, order[c * k:tf.minimum((c + 1) * k, n)])
    ds = tf.data.Dataset.from_tensor_slices(chunk_units).interleave(
        traced(lambda u: sources_lib.records(source, u).map(traced(lambda r: dict(r, unit=u)))),
        cycle_length=k, block_length=1, num_parallel_calls=k, deterministic=True)
    if inp.shuffle_buffer > 1:
      ds = ds.shuffle(inp.shuffle_buffer,
                      seed=tf.cast(_seed(config, source_index, epoch, c)[0], tf.int64),
                      reshuffle_each_iteration=False)
    skip = tf.where(tf.equal(linear, first), tf.constant(index0, tf.int64), 0)
    ds = ds.enumerate().skip(skip)
    # A last, index -1 marker per chunk lets an epoch without a single record stop the run.
    end = tf.data.Dataset.from_tensors((tf.constant(-1, tf.int64), dict(
        key=tf.constant(""), image=tf.constant(""), text=tf.constant(""),
        problem=tf.constant(CHUNK_END), unit=tf.constant(""))))
    return ds.concatenate(end).map(
        traced(lambda i, r: (tf.stack([tf.constant(source_index, tf.int64), epoch, c, i]), r)))

  return tf.data.Dataset.range(first, 2**62).flat_map(traced(chunk))


class SkipLog:
  """Logs dropped records: the first few of each reason in full, then every 1000th."""

  def __init__(self, first: int = 20, every: int = 1000):
    self.first, self.every, self.counts = first, every, {}

  def __call__(self, source: bytes, units: np.ndarray, keys: np.ndarray,
               reasons: np.ndarray) -> np.int64:
    for unit, key, reason in zip(units, keys, reasons):
      reason_s = reason.decode(errors="replace")
      count = self.counts[reason_s] = self.counts.get(reason_s, 0) + 1
      if count <= self.first or count % self.every == 0:
        logging.warning("Skipped record %r in %s (%s): %s [%d so far for this reason]",
                        key.decode(errors="replace"), unit.decode(errors="replace"),
                        source.decode(errors="replace"), reason_s, count)
    return np.int64(len(keys))


SKIP_LOG = SkipLog()
MICRO_BATCH = 32  # records decoded per tf.data element (per-element overhead dominates small images)


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """How a source's records are decoded: the stream's seed, the training crop's output size and
  smallest area, and whether `image` holds a file path (csv sources) rather than encoded bytes."""
  seed: int
  image_size: int
  crop_area_min: float
  from_path: bool = False

  @classmethod
  def of(cls, config: ml_collections.ConfigDict, source: sources_lib.Source) -> "DecodeOptions":
    return cls(seed=config.seed, image_size=config.input.image_size,
               crop_area_min=config.input.crop_area_min, from_path=source.format == "csv")


def record_problems(records: dict[str, tf.Tensor], text: tf.Tensor, from_path: bool) -> tf.Tensor:
  """Why each record of a micro-batch is unusable, '' when it is usable: [M] strings.

  The first that applies of: the reader's own problem, no image, the picked caption's `text`
  problem, an image of unknown format (not checked for paths).
  """
  image_data = records["image"]
  problem = records["problem"]
  for check in (tf.where(tf.equal(tf.strings.length(image_data), 0), "no image", ""),
                text_problem(text),
                tf.zeros_like(problem) if from_path else tf.where(
                    tf.equal(image_format(image_data), ""), "not an image (unknown format)", "")):
    problem = tf.where(tf.equal(problem, ""), check, problem)
  return problem


def decode_image(data: tf.Tensor, crop_seed: tf.Tensor, flip_seed: tf.Tensor,
                 options: DecodeOptions) -> tf.Tensor:
  """One record's training image: encoded bytes (or a file path) -> cropped, flipped and
  normalised f32 [S, S, 3]. Raises (when run) if it cannot be read or decoded."""
  encoded = tf.io.read_file(data) if options.from_path else data
  image = random_resized_crop(encoded, crop_seed, options.image_size, options.crop_area_min)
  return normalize(tf.image.stateless_random_flip_left_right(image, flip_seed))


def decode_batch(positions: tf.Tensor, records: dict[str, tf.Tensor],
                 options: DecodeOptions) -> dict[str, tf.Tensor]:
  """A micro-batch of M records -> {image f32 [M,S,S,3], text, problem, _position, _key, unit}.

  Every choice (crop, flip, caption) is seeded by the record's position. Usable records (''
  problem) get their image (decode_image), the others zeros. Raises (when run) if an image that
  passed the checks cannot be read or decoded.
  """
  size = options.image_size
  seeds = record_seeds(options.seed, positions)  # [M, 3, 2]: crop, flip, caption
  text = pick_texts(records["text"], seeds[:, 2])
  problem = record_problems(records, text, options.from_path)

  def load_one_image(args):
    data, crop_seed, flip_seed, ok = args
    return tf.cond(ok, lambda: decode_image(data, crop_seed, flip_seed, options),
                   lambda: tf.zeros([size, size, 3]))

  image = tf.map_fn(load_one_image,
                    (records["image"], seeds[:, 0], seeds[:, 1], tf.equal(problem, "")),
                    fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
                    parallel_iterations=1)
  return dict(image=image, text=text, problem=problem, _position=positions,
              _key=records["key"], unit=records["unit"])


@functools.lru_cache(maxsize=None)
def decode_batch_fn(options: DecodeOptions):
  """decode_batch for `options` as one tf.function, called by every pipeline built with the same
  options (the source check, the training stream and its per-record fallback, a resumed
  stream): each of them used to trace it again, ~0.5 s of start-up apiece."""
  return tf.function(functools.partial(decode_batch, options=options), autograph=False)


def decode_any_batch(positions: tf.Tensor, records: dict[str, tf.Tensor],
                     options: DecodeOptions) -> dict[str, tf.Tensor]:
  """decode_batch_fn(options) for a micro-batch of any size: traced once per process and record
  structure, for an unknown number of records (a micro-batch and a single record alike)."""
  specs = tf.nest.map_structure(lambda t: tf.TensorSpec([None, *t.shape[1:]], t.dtype),
                                (positions, records))
  fn = decode_batch_fn(options)
  fn.get_concrete_function(*specs)  # a trace that every size is a subtype of: no other one
  return fn(positions, records)


def decode_record(position: tf.Tensor, record: dict[str, tf.Tensor],
                  options: DecodeOptions) -> tf.data.Dataset:
  """One record -> a one-element dataset: decode_batch of it as a micro-batch of one or, if that
  fails, the record marked "corrupt or truncated image" ("image file unreadable" for paths)."""
  size = options.image_size
  batched = tf.nest.map_structure(lambda x: x[None], (position, record))
  ok = tf.data.Dataset.from_tensors(batched).map(
      traced(functools.partial(decode_any_batch, options=options))).ignore_errors()
  failed = tf.data.Dataset.from_tensors(dict(
      image=tf.zeros([1, size, size, 3]), text=tf.constant([""]),
      problem=tf.constant(["image file unreadable" if options.from_path else
                           "corrupt or truncated image"]),
      _position=position[None], _key=record["key"][None], unit=record["unit"][None]))
  return ok.concatenate(failed).take(1)


def decode_guarded(positions: tf.Tensor, records: dict[str, tf.Tensor],
                   options: DecodeOptions) -> tf.data.Dataset:
  """A micro-batch -> a one-element dataset of decode_batch's output for it.

  Decoding errors cannot be caught inside a map, so the micro-batch is decoded in a dataset with
  ignore_errors(); if that fails, its records are decoded one by one (decode_record), so only
  the broken ones are marked unusable.
  """
  one_by_one = tf.data.Dataset.from_tensor_slices((positions, records)).flat_map(
      traced(functools.partial(decode_record, options=options)))
  fallback = one_by_one.unbatch().batch(MICRO_BATCH)
  batch = tf.data.Dataset.from_tensors((positions, records)).map(
      traced(functools.partial(decode_any_batch, options=options))).ignore_errors()
  return batch.concatenate(fallback).take(1)


def _last_or(values: tf.Tensor, default: tf.Tensor) -> tf.Tensor:
  """The last of `values` [n], or `default` if there are none."""
  return tf.concat([[default], values], axis=0)[-1]


def drop_and_count(state: tf.Tensor, mb: dict[str, tf.Tensor], *, source_name: str,
                   num_units: int, last_chunk: int, max_in_a_row: int = MAX_SKIPPED_IN_A_ROW,
                   skip_log: SkipLog | None = None) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
  """The scan step over decoded micro-batches: drops unusable records, logs them (`skip_log`,
  SKIP_LOG by default), and gives each usable one the number dropped just before it.

  state: int64 [2], (unusable records since the last usable one, usable records since the last
  epoch's end); an epoch ends with the CHUNK_END marker (index -1) of its chunk `last_chunk`,
  markers are never counted. Returns (the next state, {image, text, _position, _key, _skipped} of
  the usable records). Fails (when run) once `max_in_a_row` records in a row were unusable, or
  when a whole epoch (of `num_units` files) held no usable record.
  """
  in_a_row, in_epoch = tf.unstack(state)
  position = mb["_position"]
  marker = position[:, 3] < 0
  usable = tf.equal(mb["problem"], "")
  bad = tf.logical_and(tf.logical_not(usable), tf.logical_not(marker))
  bad_so_far = tf.cumsum(tf.cast(bad, tf.int64))
  at_usable = tf.gather(bad_so_far, tf.where(usable)[:, 0])
  skipped = at_usable - tf.concat([[-in_a_row], at_usable[:-1]], axis=0)
  next_in_a_row = bad_so_far[-1] - _last_or(at_usable, -in_a_row)
  # Usable records per epoch, between the markers ending an epoch's last chunk.
  records_so_far = tf.cumsum(tf.cast(usable, tf.int64))
  at_end = tf.gather(records_so_far, tf.where(
      tf.logical_and(marker, tf.equal(position[:, 2], last_chunk)))[:, 0])
  per_epoch = at_end - tf.concat([[-in_epoch], at_end[:-1]], axis=0)
  next_in_epoch = records_so_far[-1] - _last_or(at_end, -in_epoch)
  log_fn = SKIP_LOG if skip_log is None else skip_log

  def log():
    n = tf.numpy_function(log_fn, [tf.constant(source_name), mb["unit"][bad], mb["_key"][bad],
                                   mb["problem"][bad]], tf.int64, stateful=True)
    return tf.ensure_shape(n, [])

  logged = tf.cond(tf.reduce_any(bad), log, lambda: tf.constant(0, tf.int64))
  checks = [
      tf.debugging.assert_less(
          next_in_a_row, tf.constant(max_in_a_row, tf.int64),
          message=f"{max_in_a_row} records in a row of data source {source_name} were "
                  "unusable (see the 'Skipped record' log lines): check config.input.data."),
      tf.debugging.assert_positive(
          tf.concat([per_epoch, [1]], axis=0),
          message=f"A whole epoch of data source {source_name} ({num_units} file(s) in this "
                  "process) held no usable record (see the 'Skipped record' log lines): the "
                  "files are empty, broken or not in the source's format; check "
                  "config.input.data."),
  ]
  with tf.control_dependencies([logged] + checks):
    out = {k: tf.gather(mb[k], tf.where(usable)[:, 0])
           for k in ("image", "text", "_position", "_key")}
    out["_skipped"] = skipped
  return tf.stack([next_in_a_row, next_in_epoch]), out


def example_stream(source: sources_lib.Source, source_index: int, units: list[str],
                   config: ml_collections.ConfigDict,
                   start: tuple[int, int, int]) -> tf.data.Dataset:
  """Usable, augmented examples of one source: {image, text, _position, _skipped, _key}.

  Micro-batches of records are decoded (decode_guarded), then the unusable records dropped and
  counted (drop_and_count).
  """
  decode = functools.partial(decode_guarded, options=DecodeOptions.of(config, source))
  count = functools.partial(drop_and_count, source_name=source.name, num_units=len(units),
                            last_chunk=num_chunks(len(units), config.input.cycle_length) - 1)
  # Resumed inside an epoch: the (usable) records before the start position count for it.
  in_epoch = 0 if tuple(start[1:]) == (0, 0) else 1
  ds = record_stream(source, source_index, units, config, start).batch(MICRO_BATCH)
  # One micro-batch per inner dataset: the output keeps the input order for any cycle_length.
  ds = ds.interleave(traced(decode), cycle_length=max(8, os.cpu_count() or 1), block_length=1,
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.scan(tf.constant([0, in_epoch], tf.int64), traced(count)).unbatch()


# ---------------------------------------------------------------------------------------------
# Where a process is in its stream.

@dataclasses.dataclass
class InputState:
  """This process's place in its data stream: for each source the (epoch, chunk, index) of the
  next record to read, the number of examples consumed and of records skipped so far."""
  positions: list[list[int]]
  consumed: int = 0
  skipped: int = 0

  @classmethod
  def start(cls, num_sources: int) -> "InputState":
    return cls(positions=[[0, 0, 0] for _ in range(num_sources)])

  def update(self, batch: dict[str, np.ndarray]) -> None:
    """Records a consumed batch (with its host fields)."""
    position = batch["_position"]
    for s in np.unique(position[:, 0]):
      last = position[position[:, 0] == s][-1]
      self.positions[int(s)] = [int(last[1]), int(last[2]), int(last[3]) + 1]
    self.consumed += len(position)
    self.skipped += int(batch["_skipped"].sum())

  def to_list(self) -> list[int]:
    return [self.consumed, self.skipped] + [v for p in self.positions for v in p]

  @classmethod
  def from_list(cls, values: list[int]) -> "InputState":
    values = [int(v) for v in values]
    rest = values[2:]
    return cls(positions=[rest[i:i + 3] for i in range(0, len(rest), 3)], consumed=values[0],
               skipped=values[1])


def _split31(values: list[int]) -> list[int]:
  return [x for v in values for x in (v >> 31, v & 0x7FFFFFFF)]  # int32-safe for all-gathers


def _join31(values) -> list[int]:
  return [(int(hi) << 31) | int(lo) for hi, lo in zip(values[::2], values[1::2])]


def _all_processes(values: list[int]) -> list[list[int]]:
  """Every process's list of (non-negative, same-length) integers; a collective on multi-host."""
  if jax.process_count() == 1:
    return [list(values)]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  gathered = np.asarray(multihost_utils.process_allgather(np.asarray(_split31(values), np.int32)))
  return [_join31(row) for row in gathered.reshape(jax.process_count(), -1)]


def save_input_state(state: InputState, config: ml_collections.ConfigDict) -> dict:
  """Every process's input state, as JSON for the checkpoint (a collective on multi-host)."""
  return {"version": 1, "sources": [s.name for s in parse_sources(config)],
          "processes": _all_processes(state.to_list())}


def restore_input_state(data: dict | None, config: ml_collections.ConfigDict) -> InputState:
  """This process's input state from a checkpoint's JSON; the stream's start if unusable."""
  names = [s.name for s in parse_sources(config)]
  why = None
  if data is None:
    why = "the checkpoint holds no input position"
  elif data.get("sources") != names:
    why = f"the data sources changed (checkpoint: {data.get('sources')}, now: {names})"
  elif len(data.get("processes", [])) != jax.process_count():
    why = (f"the checkpoint was written by {len(data.get('processes', []))} processes and this "
           f"run has {jax.process_count()} (each reads a different share of the files)")
  if why:
    logging.warning("The input stream starts from its beginning: %s.", why)
    return InputState.start(len(names))
  return InputState.from_list(data["processes"][jax.process_index()])


def total_skipped(state: InputState) -> int:
  """Records skipped so far by all processes (a collective on multi-host)."""
  return sum(row[0] for row in _all_processes([state.skipped]))


def parse_sources(config: ml_collections.ConfigDict) -> list[sources_lib.Source]:
  inp = config.input
  return sources_lib.parse(inp.data, split=inp.split, data_dir=inp.data_dir,
                           image_key=inp.image_key, text_key=inp.text_key)


def source_units(source: sources_lib.Source) -> list[str]:
  """This process's share of a source's units (files, or pieces of TFDS and CSV files)."""
  pieces = max(sources_lib.MIN_UNITS if source.format == "csv" else 1, jax.process_count())
  return sources_lib.process_units(sources_lib.units(source, pieces), source)


CHECK_RECORDS = 4 * MICRO_BATCH  # records check_sources reads at most per source


def check_sources(config: ml_collections.ConfigDict) -> None:
  """Fails fast, before a model is built: lists every source's files (this process's share) and
  decodes its records in file order until one is usable. errors.NotFoundError or
  errors.DataError, naming the source and what its records were, when none of the first
  CHECK_RECORDS is usable (or the files cannot be read at all). A collective with several
  processes: when one fails, all stop (the others name it)."""
  error = None
  try:
    for source in parse_sources(config):
      _check_source(config, source)
  except errors.FlipError as e:
    error = e
  failed = np.flatnonzero(~distributed.process_flags(error is None)).tolist()
  if error is not None:
    raise error
  if failed:
    raise errors.DataError(f"Process(es) {failed} cannot read their share of "
                           f"config.input.data (their error says why).")


def _check_source(config: ml_collections.ConfigDict, source: sources_lib.Source) -> None:
  """check_sources for one source of this process."""
  units = source_units(source)
  options = DecodeOptions.of(config, source)
  ds = tf.data.Dataset.from_tensor_slices(units[:CHECK_RECORDS]).flat_map(traced(
      lambda u, s=source: sources_lib.records(s, u).map(traced(lambda r: dict(r, unit=u)))))
  ds = ds.take(CHECK_RECORDS).enumerate().map(traced(
      lambda i, r: (tf.stack([tf.constant(0, tf.int64), 0, 0, i]), r))).batch(MICRO_BATCH)
  ds = ds.flat_map(traced(functools.partial(decode_guarded, options=options)))
  # A few micro-batches read once: tf.data's graph rewrites and autotuning cost more than they
  # save here (~0.3 s of each run's start-up).
  quick = tf.data.Options()
  quick.experimental_optimization.apply_default_optimizations = False
  quick.autotune.enabled = False
  ds = ds.with_options(quick)
  problems: collections.Counter = collections.Counter()
  try:
    for mb in ds.as_numpy_iterator():
      if (mb["problem"] == b"").any():
        break
      problems.update(p.decode(errors="replace") for p in mb["problem"])
    else:
      found = "; ".join(f"{n} x {p}" for p, n in problems.most_common(3)) or "no records"
      raise errors.DataError(
          f"Data source {source.name}: none of the first {sum(problems.values())} records "
          f"of its {len(units)} file(s) is usable ({found}). Check config.input.data: the "
          "files' format, keys (image_key/text_key) and contents.")
  except tf.errors.OpError as e:
    raise errors.DataError(f"Data source {source.name} cannot be read: "
                           f"{_first_line(e)}. Check config.input.data.") from e
  logging.info("Data source %s: %d file(s) in this process; its first records decode.",
               source.name, len(units))


def _first_line(e: tf.errors.OpError) -> str:
  """The gist of a TensorFlow error: the message of a failed check of drop_and_count, or else
  the error's type and first line (without TF's `{{function_node ...}}` prefix)."""
  text = (getattr(e, "message", "") or str(e)).strip()
  match = re.search(r"assertion failed: \[(.*?)\.*\s*\](?: \[|$)", text, re.S)
  if match:
    return match.group(1).replace("\\'", "'").strip() + "."
  line = re.sub(r"^\{\{[^}]*\}\}\s*", "", text.splitlines()[0] if text else "")
  return f"{type(e).__name__}: {line}"


def reporting_errors(batches: Iterator[dict[str, np.ndarray]],
                     config: ml_collections.ConfigDict) -> Iterator[dict[str, np.ndarray]]:
  """`batches`, with a failure inside the input pipeline (a tf.errors.OpError: the checks of
  drop_and_count, a file that became unreadable) raised as one errors.DataError naming the
  sources; the full error is logged."""
  try:
    yield from batches
  except tf.errors.OpError as e:
    names = ", ".join(s.name for s in parse_sources(config))
    logging.error("The input pipeline failed: %s", e)
    raise errors.DataError(f"The input pipeline of data source(s) {names} failed: "
                           f"{_first_line(e)}") from e


def train_dataset(config: ml_collections.ConfigDict, tokenizer: tokenizer_lib.Tokenizer,
                  state: InputState | None = None) -> tf.data.Dataset:
  """This process's training batches from `state` on.

  {image f32 [b,H,W,3], text i32 [b,L], and host fields _position i64 [b,4], _skipped i64 [b],
  _key str [b]}.
  """
  inp = config.input
  local_batch = inp.global_batch_size // jax.process_count()
  sources = parse_sources(config)
  state = state or InputState.start(len(sources))
  streams = []
  for i, source in enumerate(sources):
    units = source_units(source)
    streams.append(example_stream(source, i, units, config, tuple(state.positions[i])))
  if len(streams) == 1:
    ds = streams[0]
  else:
    # The source of the n-th example is a stateless draw seeded by n: resumable, like the rest.
    logits = tf.math.log(tf.constant([s.weight for s in sources], tf.float32))[None]
    choice = tf.data.Dataset.range(state.consumed, 2**62).map(traced(
        lambda n: tf.random.stateless_categorical(logits, 1, _seed(config, -1, n))[0, 0]))
    ds = tf.data.Dataset.choose_from_datasets(streams, choice)
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.map(traced(lambda b: dict(b, text=tokenizer.tokenize(b["text"]))),
              num_parallel_calls=tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def numpy_iterator(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  return ds.as_numpy_iterator()


_KEPT_ALIVE: list = []


def keep_alive(iterator) -> None:
  """Keeps a tf.data iterator that a failed or interrupted run leaves mid-stream from being
  destroyed: destroying it waits for its reader threads, and one that is about to run a Python
  reader (from_generator) waits for the interpreter lock that the destroying thread holds, so the
  process would hang (as it did at the exit after an input error). The entry points then end
  with os._exit (flip/cli.py); a library caller keeps the idle iterator until it exits."""
  _KEPT_ALIVE.append(iterator)


def device_fields(batch: dict[str, Any]) -> dict[str, Any]:
  """The fields that go to the accelerators (the rest is host bookkeeping)."""
  return {k: v for k, v in batch.items() if k not in HOST_FIELDS}


def prefetch_to_device(host_batches: Iterator[dict[str, Any]], mesh: jax.sharding.Mesh,
                       size: int) -> Iterator[tuple[dict[str, Any], dict[str, jax.Array]]]:
  """Yields (host batch, its sharded device arrays) with `size` batches already sent ahead.

  The transfers are asynchronous, so batch k+1 .. k+size travel to the devices while step k
  runs; size 0 sends each batch when it is asked for. The host batch (with its bookkeeping
  fields) comes along for the input position of checkpoints.
  """
  queue: collections.deque = collections.deque()

  def send(n):
    for host_batch in itertools.islice(host_batches, n):
      queue.append((host_batch, sharding.global_batch(device_fields(host_batch), mesh)))

  send(size)
  while True:
    send(1)  # with size 0 the batch asked for; otherwise the one `size` steps ahead
    if not queue:
      return
    yield queue.popleft()
