"""The pieces of a source's example stream, on hand-made micro-batches: the per-record checks,
decoding, the per-record fallback for undecodable images, and dropping and counting."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from flip.data import pipeline
from flip.data import sources

OPTIONS = pipeline.DecodeOptions(seed=0, image_size=8, crop_area_min=0.5)
SOURCE = "wds:/data/x"


def pixels(index, size=16):
  return np.random.default_rng(index).integers(0, 256, (size, size, 3), dtype=np.uint8)


def jpeg(index):
  return tf.io.encode_jpeg(pixels(index)).numpy()


def png(index):
  return tf.io.encode_png(pixels(index)).numpy()


TRUNCATED = jpeg(0)[:len(jpeg(0)) // 2]
CORRUPT = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
HTML = b"<html>404 not found</html>"


def micro_batch(rows, first_index=0):
  """(positions int64 [M, 4], records) from (image, text[, problem]) rows, keys k0, k1, ..."""
  rows = [tuple(r) + ("",) * (3 - len(r)) for r in rows]
  positions = tf.constant([[0, 0, 0, first_index + i] for i in range(len(rows))], tf.int64)
  records = dict(key=tf.constant([f"k{first_index + i}" for i in range(len(rows))]),
                 image=tf.constant([r[0] for r in rows]), text=tf.constant([r[1] for r in rows]),
                 problem=tf.constant([r[2] for r in rows]), unit=tf.constant(["u0"] * len(rows)))
  return positions, records


def strings(t):
  return [s.decode(errors="replace") for s in np.asarray(t)]


def row(records, i):
  """Record `i` of a micro-batch's records."""
  return {k: v[i] for k, v in records.items()}


def only(ds):
  """The single element of `ds`, as numpy."""
  (element,) = list(ds.as_numpy_iterator())
  return element


# --- per-record checks ---------------------------------------------------------------------

def test_record_problems_gives_the_first_reason_of_each_record():
  _, records = micro_batch([
      (jpeg(0), "a red square"),
      (b"", "a caption", "unreadable shard (EOFError: cut)"),  # the reader's reason comes first
      (b"", ""),  # no image comes before the caption
      (png(1), "   "),
      (jpeg(2), b"caf\xe9 au lait"),
      (HTML, "an html page"),
      (TRUNCATED, "a truncated jpeg"),  # looks like a JPEG: only decoding finds it broken
  ])
  got = strings(pipeline.record_problems(records, records["text"], from_path=False))
  assert got == ["", "unreadable shard (EOFError: cut)", "no image", "missing or empty caption",
                 "caption is not valid UTF-8", "not an image (unknown format)", ""]
  # Paths (csv sources) are not checked for an image format.
  got = strings(pipeline.record_problems(records, records["text"], from_path=True))
  assert got[5] == ""


# --- decoding a micro-batch ----------------------------------------------------------------

def test_decode_batch_gives_images_captions_and_problems():
  separator = sources.CAPTION_SEPARATOR
  positions, records = micro_batch([
      (jpeg(0), "a red square"),
      (png(1), f"one caption{separator}another caption"),
      (jpeg(2), ""),
  ])
  out = pipeline.decode_batch(positions, records, OPTIONS)
  assert set(out) == {"image", "text", "problem", "_position", "_key", "unit"}
  image = out["image"].numpy()
  assert image.shape == (3, 8, 8, 3) and image.dtype == np.float32
  assert np.all(np.isfinite(image[:2])) and image[0].std() > 0.1 and image[1].std() > 0.1
  assert np.all(image[2] == 0)  # unusable: not decoded
  texts = strings(out["text"])
  assert texts[0] == "a red square" and texts[1] in ("one caption", "another caption")
  assert strings(out["problem"]) == ["", "", "missing or empty caption"]
  assert np.array_equal(out["_position"], positions)
  assert strings(out["_key"]) == ["k0", "k1", "k2"] and strings(out["unit"]) == ["u0"] * 3


def test_decode_batch_and_decode_image_are_seeded_by_position_and_seed():
  positions, records = micro_batch([(jpeg(0), "a"), (jpeg(0), "a"), (jpeg(1), "b")])
  first = pipeline.decode_batch(positions, records, OPTIONS)["image"].numpy()
  again = pipeline.decode_batch(positions, records, OPTIONS)["image"].numpy()
  assert np.array_equal(first, again)
  # The same record alone (as in the fallback) gets the same pixels: only its position counts.
  alone = pipeline.decode_batch(positions[2:], {k: v[2:] for k, v in records.items()}, OPTIONS)
  assert np.array_equal(alone["image"].numpy()[0], first[2])
  # decode_image with the record's crop and flip seeds.
  seeds = pipeline.record_seeds(OPTIONS.seed, positions)
  image = pipeline.decode_image(records["image"][2], seeds[2, 0], seeds[2, 1], OPTIONS).numpy()
  assert image.shape == (8, 8, 3) and np.array_equal(image, first[2])
  # Same image, another position or another seed: another crop.
  assert not np.array_equal(first[0], first[1])
  other_seed = pipeline.DecodeOptions(seed=1, image_size=8, crop_area_min=0.5)
  assert not np.array_equal(pipeline.decode_batch(positions, records, other_seed)["image"], first)


@pytest.mark.parametrize("broken", [TRUNCATED, CORRUPT])
def test_decode_batch_raises_on_an_undecodable_image(broken):
  positions, records = micro_batch([(jpeg(0), "a"), (broken, "b")])
  with pytest.raises(tf.errors.InvalidArgumentError):
    pipeline.decode_batch(positions, records, OPTIONS)


def test_decode_batch_reads_paths(tmp_path):
  path = tmp_path / "a.png"
  path.write_bytes(png(3))
  positions, records = micro_batch([(str(path), "a picture")])
  from_path = pipeline.DecodeOptions(seed=0, image_size=8, crop_area_min=0.5, from_path=True)
  image = pipeline.decode_batch(positions, records, from_path)["image"].numpy()
  _, inline = micro_batch([(png(3), "a picture")])
  assert np.array_equal(image, pipeline.decode_batch(positions, inline, OPTIONS)["image"])
  _, missing = micro_batch([(str(tmp_path / "missing.png"), "a picture")])
  with pytest.raises(tf.errors.NotFoundError):
    pipeline.decode_batch(positions, missing, from_path)


def test_decode_options_from_config_and_source():
  from flip import config_lib
  config = config_lib.base_config()
  config.seed, config.input.image_size, config.input.crop_area_min = 7, 32, 0.4
  assert pipeline.DecodeOptions.of(config, sources.Source("csv", "/x.tsv")) == (
      pipeline.DecodeOptions(seed=7, image_size=32, crop_area_min=0.4, from_path=True))
  assert not pipeline.DecodeOptions.of(config, sources.Source("wds", "/x")).from_path


# --- the per-record fallback ---------------------------------------------------------------

def test_decode_record_marks_an_undecodable_record(tmp_path):
  # (Good records decoded this way: test_decode_guarded_marks_exactly_the_broken_records.)
  positions, records = micro_batch([(jpeg(0), "a"), (TRUNCATED, "b")])
  bad = only(pipeline.decode_record(positions[1], row(records, 1), OPTIONS))
  assert strings(bad["problem"]) == ["corrupt or truncated image"]
  assert strings(bad["_key"]) == ["k1"] and strings(bad["text"]) == [""]
  assert np.array_equal(bad["_position"], positions[1:]) and np.all(bad["image"] == 0)
  assert bad["image"].shape == (1, 8, 8, 3)
  from_path = pipeline.DecodeOptions(seed=0, image_size=8, crop_area_min=0.5, from_path=True)
  _, missing = micro_batch([(str(tmp_path / "missing.png"), "a")])
  unreadable = only(pipeline.decode_record(positions[0], row(missing, 0), from_path))
  assert strings(unreadable["problem"]) == ["image file unreadable"]


def test_decode_guarded_marks_exactly_the_broken_records():
  rows = [(jpeg(0), "a"), (TRUNCATED, "b"), (png(1), "c"), (CORRUPT, "d"), (jpeg(2), " ")]
  positions, records = micro_batch(rows)
  out = only(pipeline.decode_guarded(positions, records, OPTIONS))
  assert strings(out["problem"]) == ["", "corrupt or truncated image", "",
                                     "corrupt or truncated image", "missing or empty caption"]
  assert strings(out["_key"]) == ["k0", "k1", "k2", "k3", "k4"]
  assert np.array_equal(out["_position"], positions)
  # The good records get the pixels that decoding them in a batch of their own gives.
  keep = [0, 2, 4]
  alone = pipeline.decode_batch(tf.gather(positions, keep),
                                {k: tf.gather(v, keep) for k, v in records.items()}, OPTIONS)
  assert np.array_equal(out["image"][keep], alone["image"])
  assert strings(out["text"]) == ["a", "", "c", "", " "]
  assert np.all(out["image"][[1, 3]] == 0)


def test_decode_guarded_of_a_good_batch_is_decode_batch():
  positions, records = micro_batch([(jpeg(i), f"caption {i}") for i in range(3)])
  out = only(pipeline.decode_guarded(positions, records, OPTIONS))
  whole = pipeline.decode_batch(positions, records, OPTIONS)
  assert set(out) == set(whole)
  for k in out:
    assert np.array_equal(out[k], whole[k].numpy()), k


def test_decoding_is_traced_once_for_every_pipeline_of_the_same_options():
  # Micro-batches of other sizes, with and without broken records (decoded again one by one):
  # one trace of decode_batch, ~0.5 s of every pipeline's start-up.
  options = pipeline.DecodeOptions(seed=12345, image_size=8, crop_area_min=0.5)  # this test's
  for rows in ([(jpeg(0), "a"), (TRUNCATED, "b")], [(jpeg(1), "c")] * 3):
    only(pipeline.decode_guarded(*micro_batch(rows), options))
  assert pipeline.decode_batch_fn(options).experimental_get_tracing_count() == 1


# --- dropping and counting -----------------------------------------------------------------

def decoded(rows, first_index=0):
  """A decoded micro-batch from (problem, chunk[, index]) rows; index -1 is a CHUNK_END marker.

  Each record's 1x1 "image" is its row number, to see which are kept.
  """
  n = len(rows)
  index = [r[2] if len(r) > 2 else first_index + i for i, r in enumerate(rows)]
  return dict(image=tf.reshape(tf.range(n, dtype=tf.float32), [n, 1, 1, 1]),
              text=tf.constant([f"t{i}" for i in index]),
              problem=tf.constant([r[0] for r in rows]),
              _position=tf.constant([[0, 0, r[1], i] for r, i in zip(rows, index)], tf.int64),
              _key=tf.constant([f"k{i}" for i in index]), unit=tf.constant(["u0"] * n))


END = pipeline.CHUNK_END


def count(state, mb, **kwargs):
  """drop_and_count for a source of 2 files in 2 chunks (0 and 1), logging to a new SkipLog
  unless told otherwise: (the next state as a list, the kept records as numpy).

  Run as a graph, as tf.data's scan runs it.
  """
  kwargs.setdefault("skip_log", pipeline.SkipLog())
  step = tf.function(functools.partial(pipeline.drop_and_count, source_name=SOURCE, num_units=2,
                                       last_chunk=1, **kwargs))
  next_state, out = step(tf.constant(state, tf.int64), mb)
  return next_state.numpy().tolist(), {k: v.numpy() for k, v in out.items()}


def test_drop_and_count_keeps_usable_records_with_the_skips_before_them(caplog):
  log = pipeline.SkipLog()
  mb = decoded([("no image", 0), ("", 0), ("missing or empty caption", 0),
                ("corrupt or truncated image", 0), ("", 0), (END, 0, -1), ("", 1), (END, 1, -1),
                ("caption is not valid UTF-8", 0)])
  with caplog.at_level("WARNING"):
    state, out = count([0, 0], mb, skip_log=log)
  assert strings(out["_key"]) == ["k1", "k4", "k6"]
  assert out["_skipped"].tolist() == [1, 2, 0]
  assert out["image"].ravel().tolist() == [1, 4, 6] and strings(out["text"]) == ["t1", "t4", "t6"]
  assert out["_position"].tolist() == [[0, 0, 0, 1], [0, 0, 0, 4], [0, 0, 1, 6]]
  assert set(out) == {"image", "text", "_position", "_key", "_skipped"}
  # One unusable record since the last usable one; no usable one since the epoch's end (chunk 1's).
  assert state == [1, 0]
  assert log.counts == {"no image": 1, "missing or empty caption": 1,
                        "corrupt or truncated image": 1, "caption is not valid UTF-8": 1}
  lines = [r.getMessage() for r in caplog.records if "Skipped record" in r.getMessage()]
  assert lines == [
      f"Skipped record 'k0' in u0 ({SOURCE}): no image [1 so far for this reason]",
      f"Skipped record 'k2' in u0 ({SOURCE}): missing or empty caption [1 so far for this reason]",
      f"Skipped record 'k3' in u0 ({SOURCE}): corrupt or truncated image [1 so far for this reason]",
      f"Skipped record 'k8' in u0 ({SOURCE}): caption is not valid UTF-8 [1 so far for this reason]",
  ]


def test_drop_and_count_carries_its_state_across_micro_batches():
  log = pipeline.SkipLog()
  mbs = [decoded([("", 0), ("no image", 0), ("no image", 0)]),
         decoded([("no image", 0), (END, 0, -1), ("", 1)], first_index=3),
         decoded([("", 1), (END, 1, -1), ("no image", 0)], first_index=6),
         decoded([("no image", 0), ("no image", 0)], first_index=9),
         decoded([("", 0)], first_index=11)]
  states, skipped = [], []
  state = [0, 0]
  for mb in mbs:
    state, out = count(state, mb, skip_log=log)
    states.append(state)
    skipped.append(out["_skipped"].tolist())
  assert states == [[2, 1], [0, 2], [1, 0], [3, 0], [0, 1]]
  assert skipped == [[0], [3], [0], [], [3]]  # no record of the 4th batch is kept
  assert log.counts == {"no image": 6}
  # The same in a tf.data scan, as example_stream uses it.
  ds = tf.data.Dataset.from_tensors(mbs[0])
  for mb in mbs[1:]:
    ds = ds.concatenate(tf.data.Dataset.from_tensors(mb))
  step = functools.partial(pipeline.drop_and_count, source_name=SOURCE, num_units=2,
                           last_chunk=1, skip_log=log)
  got = list(ds.scan(tf.constant([0, 0], tf.int64), step).as_numpy_iterator())
  assert [g["_skipped"].tolist() for g in got] == skipped
  assert log.counts == {"no image": 12}


def test_drop_and_count_stops_after_too_many_unusable_records_in_a_row():
  bad3 = decoded([("no image", 0)] * 3)
  state, _ = count([0, 0], bad3, max_in_a_row=4)
  assert state == [3, 0]
  # A usable record resets the count; markers neither count nor reset it.
  state, _ = count(state, decoded([("", 0), ("no image", 0), (END, 0, -1)]), max_in_a_row=4)
  assert state == [1, 1]
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=f"4 records in a row of data source {SOURCE} were unusable"):
    count(state, bad3, max_in_a_row=4)
  # The default limit, MAX_SKIPPED_IN_A_ROW, and the default log, SKIP_LOG.
  limit = pipeline.MAX_SKIPPED_IN_A_ROW
  before = pipeline.SKIP_LOG.counts.get("no image", 0)
  assert count([limit - 2, 0], decoded([("no image", 0)]), skip_log=None)[0] == [limit - 1, 0]
  assert pipeline.SKIP_LOG.counts["no image"] == before + 1
  with pytest.raises(tf.errors.InvalidArgumentError, match=f"{limit} records in a row"):
    count([limit - 1, 0], decoded([("no image", 0)]))


def test_drop_and_count_stops_on_an_epoch_without_usable_records():
  message = (f"A whole epoch of data source {SOURCE} \\(2 file\\(s\\) in this process\\) held no "
             "usable record")
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    count([0, 0], decoded([(END, 1, -1)]))
  # The end of a chunk that is not the epoch's last ends no epoch.
  assert count([0, 0], decoded([(END, 0, -1)]))[0] == [0, 0]
  # Unusable records do not count for the epoch (a source of broken files stops after one
  # epoch); a usable one does; a resumed epoch starts at 1 (usable records before it).
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    count([0, 0], decoded([("no image", 1), (END, 1, -1)]))
  assert count([0, 0], decoded([("", 1), (END, 1, -1)]))[0] == [0, 0]
  assert count([0, 1], decoded([(END, 1, -1)]))[0] == [0, 0]
  # The second of two epochs ending in one micro-batch held nothing.
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    count([0, 0], decoded([("", 0), (END, 1, -1), (END, 1, -1)]))
