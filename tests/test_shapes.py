"""The embedded `flip_shapes` data set: determinism, balance, captions, TFDS build."""

import os
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

import conftest
from flip.data import shapes

NUM_SAMPLED = 2000  # render_example calls per check (~1 ms each)
VOCAB = os.path.join(os.path.dirname(shapes.__file__), "vocab_bert_base_uncased.txt")


@pytest.fixture(scope="module")
def train_examples():
  return [shapes.render_example("train", i) for i in range(NUM_SAMPLED)]


def _words(caption):
  return re.findall(r"[a-z]+", caption)


def test_constants():
  assert len(shapes.SHAPES) >= 6 and len(shapes.COLOURS) >= 8
  assert shapes.CLASS_NAMES == [f"{c} {s}" for c in shapes.COLOURS for s in shapes.SHAPES]
  assert shapes.SPLIT_SIZES == {"train": 20000, "validation": 1000, "test": 1000}
  assert shapes.IMAGE_SIZE == 64
  assert len(set(shapes.SPLIT_SEEDS[s] for s in shapes.SPLIT_SIZES)) == len(shapes.SPLIT_SIZES)


def test_render_is_deterministic():
  for split in shapes.SPLIT_SIZES:
    for index in (0, 1, 777):
      a = shapes.render_example(split, index)
      b = shapes.render_example(split, index)
      assert a["image"].tobytes() == b["image"].tobytes()
      assert a["captions"] == b["captions"]
      assert a["objects"] == b["objects"] and a["label"] == b["label"]
      # The encoded TFDS example (PNG bytes included) is reproducible too.
      assert shapes._tfds_example(split, index)["image"] == shapes._tfds_example(split, index)["image"]


def test_splits_differ():
  for index in (0, 5, 123):
    images = [shapes.render_example(s, index)["image"].tobytes() for s in shapes.SPLIT_SIZES]
    assert len(set(images)) == len(images)
  with pytest.raises(ValueError):
    shapes.render_example("bogus", 0)


def test_example_structure(train_examples):
  for ex in train_examples[:200]:
    image = ex["image"]
    assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
    assert len(ex["captions"]) == 3 and len(set(ex["captions"])) == 3
    assert ex["num_objects"] == len(ex["objects"]) in (1, 2)
    primary = ex["objects"][0]
    assert shapes.CLASS_NAMES[ex["label"]] == f"{primary['colour']} {primary['shape']}"
    for obj in ex["objects"]:
      assert obj["size"] in shapes.SIZES and obj["position"] in shapes.POSITIONS
      ymin, xmin, ymax, xmax = obj["bbox"]
      # Inside roughly the central 80% of the image.
      assert 3 / 64 <= ymin < ymax <= 61 / 64 and 3 / 64 <= xmin < xmax <= 61 / 64
      cy = (ymin + ymax) / 2 * 64
      expected = "top" if cy < 26.5 else "bottom" if cy > 37.5 else "middle"
      assert obj["position"] == expected
      height = (ymax - ymin) * 64
      assert (12 <= height <= 26) if obj["size"] == "small" else (20 <= height <= 40)


def test_balance_and_mix(train_examples):
  labels = np.array([ex["label"] for ex in train_examples])
  counts = np.bincount(labels, minlength=len(shapes.CLASS_NAMES))
  assert counts.min() >= len(train_examples) // len(shapes.CLASS_NAMES) - 1
  assert counts.max() <= len(train_examples) // len(shapes.CLASS_NAMES) + 1
  two = np.mean([ex["num_objects"] == 2 for ex in train_examples])
  assert 0.23 < two < 0.37
  assert {ex["background"] for ex in train_examples} == set(shapes.BACKGROUNDS)
  for split in ("validation", "test"):  # the first block of every split has all classes
    assert {shapes.render_example(split, i)["label"] for i in range(48)} == set(range(48))


def test_captions(train_examples):
  with open(VOCAB) as f:
    vocab = set(line.strip() for line in f)
  canonical = 0
  total = 0
  for ex in train_examples:
    primary = ex["objects"][0]
    colours = {primary["colour"], *shapes.COLOUR_SYNONYMS.get(primary["colour"], [])}
    shape_words = {primary["shape"], *shapes.SHAPE_SYNONYMS.get(primary["shape"], [])}
    for caption in ex["captions"]:
      words = _words(caption)
      assert colours & set(words), caption
      assert shape_words & set(words), caption
      assert "left" not in caption and "right" not in caption, caption
      assert len(caption.split()) <= 25
      assert set(words) <= vocab, caption
      if ex["num_objects"] == 2:  # both objects are described
        other = ex["objects"][1]
        assert {other["colour"], *shapes.COLOUR_SYNONYMS.get(other["colour"], [])} & set(words)
        assert {other["shape"], *shapes.SHAPE_SYNONYMS.get(other["shape"], [])} & set(words)
      total += 1
      canonical += primary["colour"] in words and primary["shape"] in words
  assert canonical / total >= 0.7


def test_objects_stand_out(train_examples):
  for ex in train_examples[:1000]:
    image = ex["image"].astype(np.float32)
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    # Backgrounds are muted (low chroma); objects are saturated.
    assert (border.max(-1) - border.min(-1)).max() <= 45
    ymin, xmin, ymax, xmax = (np.array(ex["objects"][0]["bbox"]) * 64).round().astype(int)
    inside = image[ymin:ymax, xmin:xmax].reshape(-1, 3)
    assert (inside.max(-1) - inside.min(-1)).max() >= 100
    assert np.linalg.norm(inside.mean(0) - border.mean(0)) > 20


def test_tfds_build_and_load(shapes_data_dir):
  builder = tfds.builder("flip_shapes", data_dir=shapes_data_dir)
  assert builder.is_prepared()
  assert builder.info.version == "1.1.0"
  # The tests' build is cut to conftest.split_sizes(); the data set is SPLIT_SIZES.
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == conftest.split_sizes()
  assert sorted(builder._split_generators(None)) == sorted(shapes.SPLIT_SIZES)
  # The cut train split is the data set's first train_examples() examples.
  labels = [ex["label"] for ex in tfds.as_numpy(tfds.load("flip_shapes", split="train",
                                                           data_dir=shapes_data_dir))]
  want = [shapes._primary_class("train", i) for i in range(conftest.train_examples())]
  assert (np.bincount(labels, minlength=shapes.NUM_CLASSES).tolist() ==
          np.bincount(want, minlength=shapes.NUM_CLASSES).tolist())
  assert builder.info.features["label"].names == shapes.CLASS_NAMES

  ds = tfds.load("flip_shapes", split="validation", data_dir=shapes_data_dir)
  by_captions = {}
  for i in range(shapes.SPLIT_SIZES["validation"]):
    ex = shapes.render_example("validation", i)
    by_captions[tuple(ex["captions"])] = ex
  for item in tfds.as_numpy(ds.take(30)):
    assert item["image"].dtype == np.uint8 and item["image"].shape == (64, 64, 3)
    captions = tuple(c.decode("utf-8") for c in item["captions"])
    ref = by_captions[captions]  # every stored example is render_example's output
    np.testing.assert_array_equal(item["image"], ref["image"])
    assert item["label"] == ref["label"] and item["num_objects"] == ref["num_objects"]
    objects = item["objects"]
    assert objects["bbox"].shape == (ref["num_objects"], 4)
    assert [shapes.SHAPES[k] for k in objects["shape"]] == [o["shape"] for o in ref["objects"]]
    assert [shapes.COLOURS[k] for k in objects["colour"]] == [o["colour"] for o in ref["objects"]]
    assert item["label"] == (objects["colour"][0] * len(shapes.SHAPES) + objects["shape"][0])
    np.testing.assert_allclose(objects["bbox"], [o["bbox"] for o in ref["objects"]], atol=1e-6)
