"""`config.input.data` strings -> Source descriptions: no TensorFlow, so configs load anywhere.

The grammar is documented in flip/data/sources.py, which reads the sources.
"""

from __future__ import annotations

import dataclasses
import re

from flip import errors

FORMATS = ("wds", "tfrecord", "tfds", "csv")
WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
DEFAULT_KEYS = {  # (image_key, text_key) per format
    "wds": (",".join(WDS_IMAGE_EXTS), "txt"),
    "tfrecord": ("jpg", "txt"),
    "tfds": ("image", "captions"),
    "csv": ("", ""),
}
OPTIONS = ("weight", "split", "data_dir", "image_key", "text_key")


@dataclasses.dataclass(frozen=True)
class Source:
  format: str
  location: str
  weight: float = 1.0
  split: str = "train"
  data_dir: str | None = None
  image_key: str = ""
  text_key: str = ""

  @property
  def name(self) -> str:
    return f"{self.format}:{self.location}"


def parse(spec: str | None, *, split: str = "train", data_dir: str | None = None,
          image_key: str | None = None, text_key: str | None = None) -> list[Source]:
  """Parses config.input.data; the keyword arguments are config.input's defaults."""
  if not spec or not spec.strip():
    raise errors.ConfigError(
        "config.input.data is not set: pass e.g. --config.input.data=tfds:flip_shapes "
        "(the embedded data set) or --config.input.data='wds:/path/{00000..00099}.tar'.")
  sources = []
  for part in spec.split(";"):
    part = part.strip()
    if not part:
      continue
    fmt, sep, rest = part.partition(":")
    fmt = fmt.strip().lower()
    if not sep or fmt not in FORMATS:
      raise errors.ConfigError(
          f"Data source {part!r} must be FORMAT:LOCATION with FORMAT one of "
          f"{FORMATS}, e.g. wds:/data/laion/{{00000..00099}}.tar or tfds:flip_shapes.")
    location, _, query = rest.partition("?")
    options = {}
    for item in filter(None, query.split("&")):
      key, eq, value = item.partition("=")
      if not eq or key not in OPTIONS:
        raise errors.ConfigError(f"Bad option {item!r} in data source {part!r}: options are "
                                 f"{OPTIONS}, written ?key=value&key=value.")
      options[key] = value
    try:
      weight = float(options.pop("weight", 1.0))
    except ValueError as e:
      raise errors.ConfigError(f"The weight of data source {part!r} is not a number.") from e
    if not weight > 0:
      raise errors.ConfigError(f"The weight of data source {part!r} must be positive.")
    default_image, default_text = DEFAULT_KEYS[fmt]
    sources.append(Source(
        format=fmt, location=location.strip(), weight=weight,
        split=options.get("split", split), data_dir=options.get("data_dir", data_dir),
        image_key=options.get("image_key", image_key or default_image),
        text_key=options.get("text_key", text_key or default_text)))
  if not sources:
    raise errors.ConfigError(f"config.input.data={spec!r} names no source.")
  return sources


def expand_braces(pattern: str) -> list[str]:
  """'a/{000..002}.tar' -> ['a/000.tar', 'a/001.tar', 'a/002.tar']; '{x,y}' lists too."""
  match = re.search(r"\{([^{}]*)\}", pattern)
  if not match:
    return [pattern]
  head, tail, body = pattern[:match.start()], pattern[match.end():], match.group(1)
  range_match = re.fullmatch(r"(\d+)\.\.(\d+)", body)
  if range_match:
    lo, hi = range_match.groups()
    width = len(lo) if lo.startswith("0") else 0
    items = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
  else:
    items = body.split(",")
  return [p for item in items for p in expand_braces(head + item + tail)]
