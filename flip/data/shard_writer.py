"""Writes image-text samples into numbered shards in img2dataset's output formats.

`wds`: webdataset tars `{output_dir}/00000.tar, 00001.tar, ...`, each sample stored as the members
`{key}.{image_ext}` (the image bytes), `{key}.txt` (the caption) and `{key}.json` (key, caption and
any metadata), in that order. `tfrecord`: `{output_dir}/00000.tfrecord, ...`, one tf.train.Example
per sample with the bytes features `key`, `{image_ext}` (normally `jpg`) and `txt`, the layout the
released FLIP code reads.

Nothing is validated or re-encoded here: bytes are written as given (tests rely on that to make
broken records). All files go through tf.io.gfile, so `gs://` output directories work.
"""

from __future__ import annotations

import io
import json
import tarfile

import tensorflow as tf

from flip import errors

FORMATS = ("wds", "tfrecord")
_EXTENSIONS = {"wds": "tar", "tfrecord": "tfrecord"}


def sample_key(index: int, samples_per_shard: int) -> str:
  """img2dataset's key of the index-th sample written: 5-digit shard, then index in the shard.

  The in-shard part has the digits of samples_per_shard - 1 (4 for 10,000, giving 9 in all).
  """
  shard, offset = divmod(index, samples_per_shard)
  return f"{shard:05d}{offset:0{len(str(max(samples_per_shard - 1, 1)))}d}"


def shard_path(output_dir: str, shard: int, fmt: str) -> str:
  return f"{output_dir.rstrip('/')}/{shard:05d}.{_EXTENSIONS[fmt]}"


def _caption_text(caption: str | bytes) -> str | None:
  """The caption as str, or None when it is bytes that are not valid UTF-8."""
  if isinstance(caption, str):
    return caption
  try:
    return bytes(caption).decode("utf-8")
  except UnicodeDecodeError:
    return None


def _caption_bytes(caption: str | bytes) -> bytes:
  return caption.encode("utf-8") if isinstance(caption, str) else bytes(caption)


def _feature(value) -> tf.train.Feature:
  """A tf.train.Feature for a metadata value (str/bytes, bool/int, float; other types as JSON)."""
  if isinstance(value, (bool, int)):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
  if isinstance(value, float):
    return tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
  if isinstance(value, str):
    value = value.encode("utf-8")
  elif not isinstance(value, bytes):
    value = json.dumps(value).encode("utf-8")
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


class _TarShard:
  """One webdataset tar, streamed into a GFile."""

  def __init__(self, path: str):
    self._file = tf.io.gfile.GFile(path, "wb")
    self._tar = tarfile.open(fileobj=self._file, mode="w|")

  def _add(self, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # mtime 0: reproducible shards.
    self._tar.addfile(info, io.BytesIO(data))

  def write(self, key: str, image: bytes, caption: str | bytes, image_ext: str,
            meta: dict | None) -> None:
    self._add(f"{key}.{image_ext}", bytes(image))
    self._add(f"{key}.txt", _caption_bytes(caption))
    record = {"key": key, "caption": _caption_text(caption), **(meta or {})}
    self._add(f"{key}.json", json.dumps(record, ensure_ascii=False).encode("utf-8"))

  def close(self) -> None:
    self._tar.close()
    self._file.close()


class _TFRecordShard:
  """One TFRecord file of tf.train.Examples."""

  def __init__(self, path: str):
    self._writer = tf.io.TFRecordWriter(path)

  def write(self, key: str, image: bytes, caption: str | bytes, image_ext: str,
            meta: dict | None) -> None:
    features = {"key": _feature(key), image_ext: _feature(bytes(image)),
                "txt": _feature(_caption_bytes(caption))}
    for name, value in (meta or {}).items():
      if name in features:
        raise errors.ConfigError(
            f"Metadata field {name!r} of sample {key!r} clashes with the TFRecord "
            f"feature of the same name; rename it (reserved: {sorted(features)}).")
      if value is not None:
        features[name] = _feature(value)
    example = tf.train.Example(features=tf.train.Features(feature=features))
    self._writer.write(example.SerializeToString())

  def close(self) -> None:
    self._writer.close()


class ShardWriter:
  """Writes samples into numbered shards: webdataset tars or TFRecords as img2dataset does."""

  def __init__(self, output_dir: str, fmt: str = "wds", samples_per_shard: int = 10_000):
    if fmt not in FORMATS:
      raise errors.ConfigError(f"Unknown shard format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if samples_per_shard < 1:
      raise errors.ConfigError(f"samples_per_shard={samples_per_shard} must be at least 1.")
    tf.io.gfile.makedirs(output_dir)
    self.output_dir = output_dir
    self.fmt = fmt
    self.samples_per_shard = samples_per_shard
    self.count = 0  # Samples written so far.
    self._paths: list[str] = []
    self._shard: _TarShard | _TFRecordShard | None = None
    self._closed = False

  def next_key(self) -> str:
    """The img2dataset-style key the next sample would get (see sample_key)."""
    return sample_key(self.count, self.samples_per_shard)

  def write(self, key: str, image: bytes, caption: str | bytes, image_ext: str = "jpg",
            meta: dict | None = None) -> None:
    """Appends one sample; a new shard starts every samples_per_shard samples."""
    if self._closed:
      raise errors.ConfigError(
          f"ShardWriter for {self.output_dir} is closed; open a new one to write "
          "more.")
    image_ext = image_ext.lstrip(".").lower()
    if not key or "." in key or "/" in key:
      raise errors.ConfigError(f"Sample key {key!r} must be non-empty and contain no '.' or '/' "
                               "(webdataset splits member names at the first dot).")
    if not image_ext or image_ext in ("txt", "json", "key"):
      raise errors.ConfigError(
          f"image_ext={image_ext!r} would clash with the caption or metadata; use the "
          "image's format, e.g. 'jpg', 'png' or 'webp'.")
    if self.count % self.samples_per_shard == 0:
      self._close_shard()
      path = shard_path(self.output_dir, len(self._paths), self.fmt)
      self._shard = _TarShard(path) if self.fmt == "wds" else _TFRecordShard(path)
      self._paths.append(path)
    self._shard.write(key, image, caption, image_ext, meta)
    self.count += 1

  def _close_shard(self) -> None:
    if self._shard is not None:
      self._shard.close()
      self._shard = None

  def close(self) -> list[str]:
    """Finishes the open shard; returns the shard paths written, in order (idempotent)."""
    self._close_shard()
    self._closed = True
    return list(self._paths)

  def __enter__(self) -> ShardWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
