"""Generated image-text shards for the input tests, with deliberately broken records."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
from PIL import Image

from flip.data import shard_writer

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


def image_bytes(index: int, fmt: str = "JPEG", size=(40, 48)) -> bytes:
  """A small picture that differs per index, encoded as `fmt`."""
  rng = np.random.default_rng(index)
  array = (rng.random((size[0], size[1], 3)) * 60).astype(np.uint8)
  array[:, :, index % 3] += np.uint8(120 + index % 50)
  out = io.BytesIO()
  Image.fromarray(array).save(out, fmt)
  return out.getvalue()


def caption(index: int) -> str:
  return f"a {COLOURS[index % len(COLOURS)]} picture number {index}"


BROKEN = {  # name -> (image bytes, caption bytes): each is dropped with a reason
    "corrupt": (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, b"a corrupt jpeg"),
    "truncated": (None, b"a truncated jpeg"),  # filled in: the first 40% of a real JPEG
    "not_image": (b"<html>404 not found</html>", b"an html page saved as .jpg"),
    "empty_caption": (None, b"   "),
    "non_utf8": (None, b"caf\xe9 au lait"),
}


def write_shards(directory: str, fmt: str = "wds", num_shards: int = 3, per_shard: int = 10,
                 broken: bool = True, first_index: int = 0) -> dict:
  """Shards of `per_shard` good samples each; with `broken`, shard 0 also holds one record of
  every BROKEN kind (never last, so every skipped record precedes a good one in its shard).

  Returns {"files", "good_keys", "broken_keys"}.
  """
  good, bad, files = [], [], []
  index = first_index
  os.makedirs(directory, exist_ok=True)
  for shard in range(num_shards):
    path = os.path.join(directory, f"{shard:05d}.{'tar' if fmt == 'wds' else 'tfrecord'}")
    samples = []
    for i in range(per_shard):
      samples.append((f"{shard:05d}{i:04d}", image_bytes(index), caption(index).encode(), True))
      index += 1
    if broken and shard == 0:
      for j, (name, (image, text)) in enumerate(BROKEN.items()):
        if image is None:
          image = image_bytes(1000 + j)
          if name == "truncated":
            image = image[:int(len(image) * 0.4)]
        samples.insert(1 + 2 * j, (f"{shard:05d}bad_{name}", image, text, False))
    with _writer(path, fmt) as write:
      for key, image, text, ok in samples:
        write(key, image, text)
        (good if ok else bad).append(key)
    files.append(path)
  return {"files": files, "good_keys": good, "broken_keys": bad}


class _writer:
  """A one-shard ShardWriter that writes exactly to `path`."""

  def __init__(self, path, fmt):
    self.path, self.fmt = path, fmt
    self.directory = path + ".parts"

  def __enter__(self):
    self.writer = shard_writer.ShardWriter(self.directory, fmt=self.fmt,
                                           samples_per_shard=10**9)
    return lambda key, image, text: self.writer.write(key, image, text)

  def __exit__(self, *exc):
    (written,) = self.writer.close()
    os.replace(written, self.path)
    os.rmdir(self.directory)


def write_tar_without_image(path: str, key: str = "noimg") -> None:
  """A tar whose only sample has a caption but no image member, then one good sample."""
  with tarfile.open(path, "w") as tar:
    for name, data in ((f"{key}.txt", b"a caption with no picture"),
                       (f"{key}.json", b"{}"),
                       ("good0.jpg", image_bytes(7)), ("good0.txt", caption(7).encode())):
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def truncate(path: str, fraction: float = 0.5) -> None:
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:int(len(data) * fraction)])


def write_csv(directory: str, num: int = 12, missing: int = 1, header: bool = True,
              suffix: str = ".tsv") -> dict:
  """Images in `directory`/images and a CSV/TSV of relative paths and captions."""
  os.makedirs(os.path.join(directory, "images"), exist_ok=True)
  delim = "," if suffix == ".csv" else "\t"
  rows, good = [], []
  for i in range(num):
    rel = f"images/{i:03d}.png"
    with open(os.path.join(directory, rel), "wb") as f:
      f.write(image_bytes(i, "PNG"))
    text = caption(i) if suffix != ".csv" else f'"{caption(i)}, with a comma"'
    rows.append(f"{rel}{delim}{text}")
    good.append(rel)
  for i in range(missing):
    rows.insert(1, f"images/missing_{i}.png{delim}a picture that is not there")
  path = os.path.join(directory, "pairs" + suffix)
  with open(path, "w") as f:
    f.write("\n".join(([f"image_path{delim}caption"] if header else []) + rows) + "\n")
  return {"path": path, "good": good, "missing": missing}


def write_clip_benchmark_set(root: str, split: str, samples: list[tuple[bytes, str, object]],
                             kind: str = "classification", classnames=None, templates=None,
                             per_shard: int = 10, nshards_file: bool = True) -> str:
  """A set in CLIP_benchmark's webdataset layout (what its `clip_benchmark_export_wds` writes):
  root/{classnames.txt, zeroshot_classification_templates.txt, dataset_type.txt} and
  root/split/{nshards.txt, 0.tar, 1.tar, ...} with `s%07d.<ext>` images and `.cls` labels or
  `.txt` captions (one per line). samples: (image bytes, extension, label int or captions list;
  a value of bytes is written as is)."""
  folder = os.path.join(root, split)
  os.makedirs(folder, exist_ok=True)
  shards = [samples[i:i + per_shard] for i in range(0, len(samples), per_shard)]
  for s, part in enumerate(shards):
    with tarfile.open(os.path.join(folder, f"{s}.tar"), "w") as tar:
      for j, (image, ext, value) in enumerate(part):
        key = f"s{s * per_shard + j:07d}"
        if kind == "retrieval" and not isinstance(value, bytes):
          value = "\n".join(value).encode()
        elif not isinstance(value, bytes):
          value = str(value).encode()
        members = [(ext, image)] if image is not None else []
        members.append(("txt" if kind == "retrieval" else "cls", value))
        for member_ext, data in members:
          info = tarfile.TarInfo(f"{key}.{member_ext}")
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
  if nshards_file:
    with open(os.path.join(folder, "nshards.txt"), "w") as f:
      f.write(f"{len(shards)}\n")
  if kind == "retrieval":
    with open(os.path.join(root, "dataset_type.txt"), "w") as f:
      f.write("retrieval\n")
  if classnames is not None:
    with open(os.path.join(root, "classnames.txt"), "w") as f:
      f.write("\n".join(classnames) + "\n")
  if templates is not None:
    with open(os.path.join(root, "zeroshot_classification_templates.txt"), "w") as f:
      f.write("\n".join(templates) + "\n")
  return root
