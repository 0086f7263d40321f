"""`flip_shapes`: an embedded, procedurally generated data set of captioned scenes.

Every example is a 64x64 RGB image with one or two solid, saturated shapes on a
muted textured background, three different English captions and structured
metadata.  Nothing is downloaded: the data is generated deterministically from
``(split, index)``, so two builds give identical examples.

Usage::

    import flip.data.shapes  # registers the builder
    ds = tfds.load('flip_shapes', split='train', data_dir=data_dir)

or, without TFDS, ``render_example('train', 17)``.
"""

from __future__ import annotations

import colorsys
import io
import math
from typing import Any

from etils import epath
import numpy as np
from PIL import Image, ImageDraw
import tensorflow_datasets as tfds

# ---------------------------------------------------------------------------
# Public constants.
# ---------------------------------------------------------------------------

SHAPES = ['circle', 'square', 'triangle', 'star', 'cross', 'ring']
# All canonical words are single WordPiece tokens of BERT-base uncased
# ("cyan" is not, hence "turquoise").
COLOURS = ['red', 'orange', 'yellow', 'green', 'turquoise', 'blue', 'purple', 'pink']
CLASS_NAMES = [f'{colour} {shape}' for colour in COLOURS for shape in SHAPES]
NUM_CLASSES = len(CLASS_NAMES)
SIZES = ['small', 'large']
POSITIONS = ['top', 'middle', 'bottom']
BACKGROUNDS = ['noise', 'stripes', 'checkerboard', 'gradient', 'dots', 'grid']
IMAGE_SIZE = 64
SPLIT_SIZES = {'train': 20000, 'validation': 1000, 'test': 1000}
SPLIT_SEEDS = {'train': 1001, 'validation': 2002, 'test': 3003}
NUM_CAPTIONS = 3

# Synonyms occasionally used in captions instead of the canonical word (all of
# them are single tokens of the BERT-base uncased vocabulary).
COLOUR_SYNONYMS = {
    'red': ['crimson', 'scarlet'],
    'yellow': ['golden'],
    'turquoise': ['aqua'],
    'blue': ['azure'],
    'purple': ['violet'],
}
SHAPE_SYNONYMS = {
    'circle': ['disc', 'disk'],
    'square': ['box', 'block'],
    'cross': ['plus'],
    'ring': ['hoop'],
}
SIZE_WORDS = {'small': ['small', 'little', 'tiny'], 'large': ['large', 'big']}
POSITION_PHRASES = {
    'top': ['at the top', 'near the top', 'in the upper part'],
    'middle': ['in the middle', 'in the center', 'in the centre'],
    'bottom': ['at the bottom', 'near the bottom', 'in the lower part'],
}
BACKGROUND_WORDS = {
    'noise': ['noisy'],
    'stripes': ['striped'],
    'checkerboard': ['checked', 'tiled'],
    'gradient': ['gradient', 'shaded'],
    'dots': ['dotted', 'spotted'],
    'grid': ['grid'],
}

# Object colours: (hue in degrees, saturation, value).
_COLOUR_HSV = {
    'red': (0.0, 0.90, 0.92),
    'orange': (28.0, 0.95, 1.00),
    'yellow': (55.0, 0.95, 1.00),
    'green': (125.0, 0.85, 0.78),
    'turquoise': (178.0, 0.85, 0.88),
    'blue': (222.0, 0.90, 1.00),
    'purple': (275.0, 0.75, 0.82),
    'pink': (325.0, 0.70, 1.00),
}

_SMALL_RANGE = (16.0, 22.0)  # object extent in pixels (64 px image)
_LARGE_RANGE = (26.0, 34.0)
_LARGE_RANGE_PAIR = (26.0, 30.0)  # primary 'large' object in 2-object scenes
_MARGIN_SINGLE = 6.0  # objects stay inside the central ~80% of the image
_MARGIN_PAIR = 4.0
_P_TWO_OBJECTS = 0.3
_P_SYNONYM = 0.15
_SS = 2  # supersampling factor for anti-aliased drawing

_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5


# ---------------------------------------------------------------------------
# Backgrounds.
# ---------------------------------------------------------------------------


def _muted_colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Two low-saturation colours of similar hue and different lightness."""
  hue = rng.uniform()
  v1 = rng.uniform(0.30, 0.80)
  dv = rng.uniform(0.06, 0.14) * rng.choice([-1.0, 1.0])
  v2 = v1 + dv
  if not 0.15 <= v2 <= 0.92:
    v2 = v1 - dv
  c1 = colorsys.hsv_to_rgb(hue, rng.uniform(0.0, 0.15), v1)
  c2 = colorsys.hsv_to_rgb(hue, rng.uniform(0.0, 0.15), v2)
  return np.array(c1, np.float32), np.array(c2, np.float32)


def _pattern(kind: str, rng: np.random.Generator) -> np.ndarray:
  """A [64, 64] float32 mixing weight in [0, 1] for the given background kind."""
  x, y = _XX, _YY
  if kind == 'noise':
    coarse = rng.uniform(size=(8, 8)).astype(np.float32)
    coarse = np.asarray(
        Image.fromarray(coarse, mode='F').resize(
            (IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))
    fine = rng.uniform(size=(IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    w = rng.uniform(0.3, 0.8)
    return w * fine + (1.0 - w) * coarse
  if kind == 'stripes':
    angle = math.radians(rng.choice([0, 30, 45, 60, 90, 120, 135, 150])
                         + rng.uniform(-8, 8))
    period = rng.uniform(5.0, 12.0)
    phase = rng.uniform(0, 2 * math.pi)
    s = np.sin(2 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / period
               + phase)
    return np.clip(0.5 + 1.5 * s, 0.0, 1.0)
  if kind == 'checkerboard':
    cell = rng.uniform(4.0, 10.0)
    ox, oy = rng.uniform(0, 2 * cell, size=2)
    return ((np.floor((x + ox) / cell) + np.floor((y + oy) / cell)) % 2).astype(
        np.float32)
  if kind == 'gradient':
    angle = rng.uniform(0, 2 * math.pi)
    p = (x - 32) * math.cos(angle) + (y - 32) * math.sin(angle)
    p = (p - p.min()) / (p.max() - p.min())
    return p + rng.standard_normal(size=p.shape, dtype=np.float32) * 0.02
  if kind == 'dots':
    spacing = rng.uniform(6.0, 11.0)
    radius = rng.uniform(1.0, 2.2)
    ox, oy = rng.uniform(0, spacing, size=2)
    dx = (x + ox) % spacing - spacing / 2
    dy = (y + oy) % spacing - spacing / 2
    d = np.sqrt(dx * dx + dy * dy)
    return np.clip(radius + 0.5 - d, 0.0, 1.0)
  if kind == 'grid':
    spacing = rng.uniform(7.0, 14.0)
    width = rng.uniform(1.0, 2.0)
    ox, oy = rng.uniform(0, spacing, size=2)
    dx = np.abs((x + ox) % spacing - spacing / 2)
    dy = np.abs((y + oy) % spacing - spacing / 2)
    lx = np.clip(width / 2 + 0.5 - dx, 0.0, 1.0)
    ly = np.clip(width / 2 + 0.5 - dy, 0.0, 1.0)
    return np.maximum(lx, ly)
  raise ValueError(f'Unknown background kind {kind!r}')


def _background(kind: str, rng: np.random.Generator) -> np.ndarray:
  c1, c2 = _muted_colour_pair(rng)
  t = _pattern(kind, rng)[..., None]
  return (c1 + t * (c2 - c1)).astype(np.float32)


# ---------------------------------------------------------------------------
# Objects.
# ---------------------------------------------------------------------------


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
  a = math.radians(degrees)
  rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
  return points @ rot.T


def _geometry(shape: str, extent: float, rng: np.random.Generator) -> dict:
  """Outline of one shape of nominal size `extent` px, centred on its bbox.

  Returns a dict with either `poly` (points [k, 2] as (x, y) offsets from the
  centre) or `radius`/`inner` (disc or annulus), and `half` = the half width
  and half height of its bounding box.
  """
  e = extent
  rot = rng.uniform(-12.0, 12.0)
  if shape == 'circle':
    return dict(radius=e / 2, inner=0.0, half=(e / 2, e / 2))
  if shape == 'ring':
    return dict(radius=e / 2, inner=e / 2 * rng.uniform(0.48, 0.58),
                half=(e / 2, e / 2))
  if shape == 'square':
    h = e * 0.86 / 2
    pts = np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
  elif shape == 'triangle':
    ang = np.radians([-90.0, 30.0, 150.0])
    pts = np.stack([np.cos(ang), np.sin(ang)], 1) * (e * 0.58)
  elif shape == 'star':
    r = e * 0.52
    ang = np.radians(-90.0 + 36.0 * np.arange(10))
    rad = np.where(np.arange(10) % 2 == 0, r, r * rng.uniform(0.42, 0.50))
    pts = np.stack([np.cos(ang) * rad, np.sin(ang) * rad], 1)
  elif shape == 'cross':
    a = e / 2
    w = e * rng.uniform(0.15, 0.19)
    pts = np.array([[-w, -a], [w, -a], [w, -w], [a, -w], [a, w], [w, w],
                    [w, a], [-w, a], [-w, w], [-a, w], [-a, -w], [-w, -w]])
  else:
    raise ValueError(f'Unknown shape {shape!r}')
  pts = _rotate(pts, rot)
  lo, hi = pts.min(0), pts.max(0)
  pts = pts - (lo + hi) / 2
  return dict(poly=pts, half=tuple((hi - lo) / 2))


def _shape_mask(geom: dict, cx: float, cy: float) -> np.ndarray:
  """Anti-aliased coverage mask [64, 64] in [0, 1] of one shape."""
  s = _SS
  img = Image.new('L', (IMAGE_SIZE * s, IMAGE_SIZE * s), 0)
  draw = ImageDraw.Draw(img)
  if 'poly' in geom:
    pts = (geom['poly'] + np.array([cx, cy])) * s
    draw.polygon([tuple(p) for p in pts.tolist()], fill=255)
  else:
    for radius, fill in ((geom['radius'], 255), (geom['inner'], 0)):
      if radius > 0:
        r = radius * s
        draw.ellipse([cx * s - r, cy * s - r, cx * s + r, cy * s + r], fill=fill)
  return np.asarray(img.reduce(s), dtype=np.float32) / 255.0


def _object_rgb(colour: str, rng: np.random.Generator) -> np.ndarray:
  h, s, v = _COLOUR_HSV[colour]
  h = (h + rng.uniform(-5.0, 5.0)) % 360.0
  s = float(np.clip(s * rng.uniform(0.92, 1.06), 0.0, 1.0))
  v = float(np.clip(v * rng.uniform(0.88, 1.06), 0.0, 1.0))
  return np.array(colorsys.hsv_to_rgb(h / 360.0, s, v), np.float32)


def _position_name(cy: float) -> str:
  if cy < 26.5:
    return 'top'
  if cy > 37.5:
    return 'bottom'
  return 'middle'


def _sample_centres(rng, half, margin, n):
  """n candidate centres keeping a bbox of half-extents `half` in the margin."""
  hx, hy = half
  x = rng.uniform(margin + hx, IMAGE_SIZE - margin - hx, size=n)
  y = rng.uniform(margin + hy, IMAGE_SIZE - margin - hy, size=n)
  return np.stack([x, y], 1)


def _layout(rng: np.random.Generator, shapes: list[str]) -> list[dict]:
  """Size, outline and centre of each object (two objects kept apart)."""
  objs = []
  if len(shapes) == 1:
    size = SIZES[int(rng.integers(2))]
    extent = rng.uniform(*(_SMALL_RANGE if size == 'small' else _LARGE_RANGE))
    geom = _geometry(shapes[0], extent, rng)
    cx, cy = _sample_centres(rng, geom['half'], _MARGIN_SINGLE, 1)[0]
    objs.append(dict(size=size, geom=geom, cx=cx, cy=cy))
  else:
    # The primary object is never smaller than the secondary one.
    size0 = SIZES[int(rng.integers(2))]
    e0 = rng.uniform(*(_SMALL_RANGE if size0 == 'small' else _LARGE_RANGE_PAIR))
    e1 = rng.uniform(_SMALL_RANGE[0], min(_SMALL_RANGE[1], e0))
    g0 = _geometry(shapes[0], e0, rng)
    g1 = _geometry(shapes[1], e1, rng)
    p0 = _sample_centres(rng, g0['half'], _MARGIN_PAIR, 64)
    p1 = _sample_centres(rng, g1['half'], _MARGIN_PAIR, 64)
    gap = np.abs(p0 - p1) - (np.array(g0['half']) + np.array(g1['half']))
    # Separation of the bounding boxes along the better axis (>= 0: disjoint).
    sep = gap.max(axis=1)
    ok = np.nonzero(sep >= 1.0)[0]
    k = int(ok[0]) if len(ok) else int(np.argmax(sep))
    objs.append(dict(size=size0, geom=g0, cx=p0[k, 0], cy=p0[k, 1]))
    objs.append(dict(size='small', geom=g1, cx=p1[k, 0], cy=p1[k, 1]))
  return objs


# ---------------------------------------------------------------------------
# Captions.
# ---------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options: list[str]) -> str:
  return options[int(rng.integers(len(options)))]


def _article(phrase: str) -> str:
  return ('an ' if phrase[0] in 'aeiou' else 'a ') + phrase


def _word(rng, canonical: str, synonyms: dict[str, list[str]]) -> str:
  if canonical in synonyms and rng.uniform() < _P_SYNONYM:
    return _pick(rng, synonyms[canonical])
  return canonical


def _noun_phrase(rng, obj: dict, size_prob: float = 0.35) -> str:
  """'[size] colour shape' with occasional synonyms, no article."""
  words = []
  if rng.uniform() < size_prob:
    words.append(_pick(rng, SIZE_WORDS[obj['size']]))
  words.append(_word(rng, obj['colour'], COLOUR_SYNONYMS))
  words.append(_word(rng, obj['shape'], SHAPE_SYNONYMS))
  return ' '.join(words)


def _caption_single(rng, t: int, o: dict, bg: str) -> str:
  a = _article(_noun_phrase(rng, o))
  pos = _pick(rng, POSITION_PHRASES[o['position']])
  bgw = _pick(rng, BACKGROUND_WORDS[bg])
  if t == 0:
    return a
  if t == 1:
    return f'a photo of {a}'
  if t == 2:
    return f'{a} {pos}'
  if t == 3:
    return f'{a} on {_article(bgw)} background'
  if t == 4:
    return f'there is {a} {pos}'
  if t == 5:
    return f'an image of {a}'
  if t == 6:
    return f'a picture of {a} on {_article(bgw)} background'
  if t == 7:
    return f'a drawing of {a} {pos}'
  if t == 8:
    shape = _word(rng, o['shape'], SHAPE_SYNONYMS)
    if rng.uniform() < 0.5:
      shape = f"{_pick(rng, SIZE_WORDS[o['size']])} {shape}"
    colour = _word(rng, o['colour'], COLOUR_SYNONYMS)
    return f'{_article(shape)} that is {colour}'
  if t == 9:
    return f'a single {_noun_phrase(rng, o)}'
  if t == 10:
    return f'a photo of {a} {pos} on {_article(bgw)} background'
  if t == 11:
    return f'one {_noun_phrase(rng, o, size_prob=1.0)} {pos}'
  raise ValueError(t)


_NUM_SINGLE_TEMPLATES = 12


def _caption_pair(rng, t: int, o0: dict, o1: dict, bg: str) -> str | None:
  a = _article(_noun_phrase(rng, o0))
  b = _article(_noun_phrase(rng, o1))
  bgw = _pick(rng, BACKGROUND_WORDS[bg])
  if t == 0:
    return f'{a} and {b}'
  if t == 1:
    return f'a photo of {a} and {b}'
  if t == 2:
    return f'{a} with {b}'
  if t == 3:
    return f'two shapes: {a} and {b}'
  if t == 4:
    return f'{a} and {b} on {_article(bgw)} background'
  if t == 5:
    return f'an image of {b} and {a}'
  if t == 6:  # vertical relation, only when the objects are clearly stacked
    if o0['bbox'][2] <= o1['bbox'][0] + 0.03:
      return f'{a} above {b}' if rng.uniform() < 0.6 else f'{b} below {a}'
    if o1['bbox'][2] <= o0['bbox'][0] + 0.03:
      return f'{a} below {b}' if rng.uniform() < 0.6 else f'{b} above {a}'
    return None
  if t == 7:  # side by side (never saying which side)
    if o0['bbox'][3] <= o1['bbox'][1] + 0.03 or o1['bbox'][3] <= o0['bbox'][1] + 0.03:
      return f'{a} {_pick(rng, ["next to", "beside"])} {b}'
    return None
  if t == 8:
    if o0['position'] == o1['position']:
      return None
    pa = _pick(rng, POSITION_PHRASES[o0['position']])
    pb = _pick(rng, POSITION_PHRASES[o1['position']])
    return f'{a} {pa} and {b} {pb}'
  if t == 9:
    return f'a picture with {a} and {b}'
  raise ValueError(t)


_NUM_PAIR_TEMPLATES = 10


def _captions(rng: np.random.Generator, objs: list[dict], bg: str) -> list[str]:
  captions: list[str] = []
  n_templates = _NUM_SINGLE_TEMPLATES if len(objs) == 1 else _NUM_PAIR_TEMPLATES
  order = rng.permutation(n_templates)
  for t in list(order) * 2:
    if len(objs) == 1:
      c = _caption_single(rng, int(t), objs[0], bg)
    else:
      c = _caption_pair(rng, int(t), objs[0], objs[1], bg)
    if c is not None and c not in captions:
      captions.append(c)
    if len(captions) == NUM_CAPTIONS:
      return captions
  raise AssertionError('could not generate distinct captions')  # unreachable


# ---------------------------------------------------------------------------
# Examples.
# ---------------------------------------------------------------------------


def _primary_class(split: str, index: int) -> int:
  """Exactly balanced classes within each block of NUM_CLASSES indices."""
  rng = np.random.default_rng([SPLIT_SEEDS[split], 1, index // NUM_CLASSES])
  return int(rng.permutation(NUM_CLASSES)[index % NUM_CLASSES])


def render_example(split: str, index: int) -> dict[str, Any]:
  """Generates example `index` of `split` (a pure function of its arguments).

  Returns:
    A dict with `image` (uint8 [64, 64, 3] numpy array), `captions` (list of 3
    distinct str), `label` (int, class of the primary object, index into
    CLASS_NAMES), `num_objects` (int), `objects` (list of dicts with str
    `shape`, `colour`, `size`, `position` and `bbox` = normalised
    (ymin, xmin, ymax, xmax) floats; the primary object first) and
    `background` (str, one of BACKGROUNDS).
  """
  if split not in SPLIT_SEEDS:
    raise ValueError(f'Unknown split {split!r}')
  rng = np.random.default_rng([SPLIT_SEEDS[split], 0, index])
  label = _primary_class(split, index)
  classes = [label]
  if rng.uniform() < _P_TWO_OBJECTS:
    other = int(rng.integers(NUM_CLASSES - 1))
    classes.append(other + (other >= label))

  bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
  image = _background(bg, rng)
  objs = _layout(rng, [SHAPES[c % len(SHAPES)] for c in classes])
  for obj, cls in zip(objs, classes):
    obj['colour'] = COLOURS[cls // len(SHAPES)]
    obj['shape'] = SHAPES[cls % len(SHAPES)]
    mask = _shape_mask(obj['geom'], obj['cx'], obj['cy'])
    rgb = _object_rgb(obj['colour'], rng)
    alpha = mask[..., None]
    image += alpha * (rgb - image)
    rows = np.nonzero(mask.max(axis=1) > 0.25)[0]
    cols = np.nonzero(mask.max(axis=0) > 0.25)[0]
    obj['bbox'] = (float(rows[0]) / IMAGE_SIZE, float(cols[0]) / IMAGE_SIZE,
                   float(rows[-1] + 1) / IMAGE_SIZE,
                   float(cols[-1] + 1) / IMAGE_SIZE)
    obj['position'] = _position_name((rows[0] + rows[-1] + 1) / 2)
  image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)

  captions = _captions(rng, objs, bg)
  objects = [{k: o[k] for k in ('shape', 'colour', 'size', 'position', 'bbox')}
             for o in objs]
  return dict(image=image, captions=captions, label=label,
              num_objects=len(objects), objects=objects, background=bg)


def _encode_png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='PNG', compress_level=1)
  return buf.getvalue()


def _tfds_example(split: str, index: int) -> dict[str, Any]:
  ex = render_example(split, index)
  return dict(
      image=_encode_png(ex['image']),
      captions=ex['captions'],
      label=ex['label'],
      num_objects=np.int32(ex['num_objects']),
      objects=[
          dict(shape=o['shape'], colour=o['colour'], size=o['size'],
               position=o['position'],
               bbox=tfds.features.BBox(*(float(v) for v in o['bbox'])))
          for o in ex['objects']
      ],
  )


class FlipShapes(tfds.core.GeneratorBasedBuilder):
  """Synthetic captioned scenes of coloured shapes (generated, no download).

  64x64 images with one or two saturated shapes (6 shapes x 8 colours) on
  muted textured backgrounds, each with three captions; `label` is the
  "colour shape" class of the primary (first) object.
  """

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release.',
      '1.1.0': 'Fewer two-object scenes (30%) and lower-contrast backgrounds.',
  }

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # TFDS derives this from the package (and then needs the undeclared
    # `importlib_resources` dependency); this file is the answer anyway.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=(
            'Procedurally generated 64x64 scenes of one or two coloured shapes '
            'on muted textured backgrounds, with three captions per image.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(
                shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format='png'),
            'captions': tfds.features.Sequence(
                tfds.features.Text(), length=NUM_CAPTIONS),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
            'num_objects': tfds.features.Scalar(dtype=np.int32),
            'objects': tfds.features.Sequence({
                'shape': tfds.features.ClassLabel(names=SHAPES),
                'colour': tfds.features.ClassLabel(names=COLOURS),
                'size': tfds.features.ClassLabel(names=SIZES),
                'position': tfds.features.ClassLabel(names=POSITIONS),
                'bbox': tfds.features.BBoxFeature(),
            }),
        }),
        supervised_keys=('image', 'label'),
    )

  def download_and_prepare(self, *, download_config=None, **kwargs):
    # Nothing to download; never look for a prepared copy on GCS.
    if download_config is None:
      download_config = tfds.download.DownloadConfig(try_download_gcs=False)
    return super().download_and_prepare(download_config=download_config,
                                        **kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is generated.
    return {split: self._generate_examples(split, n)
            for split, n in SPLIT_SIZES.items()}

  def _generate_examples(self, split: str, num_examples: int):
    for index in range(num_examples):
      yield index, _tfds_example(split, index)
