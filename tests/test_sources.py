"""Input sources and the pipeline: formats, robustness to broken records, exact resumption."""

import os

import jax
import numpy as np
import pytest

import conftest
import shard_fixtures as fx
from flip import config_lib
from flip import errors
from flip import sharding
from flip.data import pipeline
from flip.data import sources
from flip.data import tokenizer as tokenizer_lib

TOKENIZER = tokenizer_lib.Tokenizer(None, 32)


def input_config(data, batch=4, **input_overrides):
  c = config_lib.base_config()
  fields = dict(data=data, image_size=16, global_batch_size=batch, shuffle_buffer=16,
                cycle_length=2, crop_area_min=0.5)
  c.input.update(dict(fields, **input_overrides))
  return c


def take(config, num_batches, state=None):
  it = pipeline.numpy_iterator(pipeline.train_dataset(config, TOKENIZER, state))
  return [next(it) for _ in range(num_batches)]


def keys_of(batches):
  return [k.decode() for b in batches for k in b["_key"]]


# --- parsing -------------------------------------------------------------------------------

def test_parse_sources_with_options_and_defaults():
  got = sources.parse("wds:/d/{000..002}.tar?weight=3; tfds:coco_captions?text_key=captions/text"
                      "&split=train[:90%]; tfrecord:gs://b/*.tfrecord; csv:/x/p.tsv",
                      split="train", data_dir="/tfds")
  assert [s.format for s in got] == ["wds", "tfds", "tfrecord", "csv"]
  assert got[0].weight == 3 and got[0].image_key == "jpg,jpeg,png,webp" and got[0].text_key == "txt"
  assert got[1].text_key == "captions/text" and got[1].split == "train[:90%]"
  assert got[1].data_dir == "/tfds" and got[1].image_key == "image"
  assert (got[2].image_key, got[2].text_key) == ("jpg", "txt")


@pytest.mark.parametrize("spec, message", [
    (None, "config.input.data is not set"),
    ("laion/*.tar", "FORMAT:LOCATION"),
    ("zip:/x", "FORMAT:LOCATION"),
    ("wds:/x?weigth=2", "Bad option"),
    ("wds:/x?weight=-1", "must be positive"),
    ("wds:/x?weight=abc", "not a number"),
])
def test_parse_rejects_bad_specs(spec, message):
  with pytest.raises(ValueError, match=message):
    sources.parse(spec)


def test_expand_braces():
  assert sources.expand_braces("a/{008..011}.tar") == [
      "a/008.tar", "a/009.tar", "a/010.tar", "a/011.tar"]
  assert sources.expand_braces("{x,y}/{1..2}") == ["x/1", "x/2", "y/1", "y/2"]


def test_missing_files_and_too_few_files_for_processes(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    sources.units(sources.parse(f"wds:{tmp_path}/{{00000..00002}}.tar")[0])
  with pytest.raises(FileNotFoundError, match="No data files match"):
    sources.units(sources.parse(f"wds:{tmp_path}/*.tar")[0])
  files = fx.write_shards(str(tmp_path), num_shards=3, broken=False)["files"]
  source = sources.parse(f"wds:{tmp_path}")[0]  # a directory: its .tar files
  assert sources.units(source) == files
  shares = [sources.process_units(files, source, i, 2) for i in range(2)]
  assert shares == [files[0::2], files[1::2]]  # disjoint, covering everything
  with pytest.raises(ValueError, match="3 file\\(s\\) but there are 4 processes"):
    sources.process_units(files, source, 0, 4)


# --- formats and robustness ----------------------------------------------------------------

def one_epoch(config, expected_records):
  """Batches until every record of epoch 0 was seen (no sample shuffle, no file shuffle)."""
  out, seen = [], 0
  it = pipeline.numpy_iterator(pipeline.train_dataset(config, TOKENIZER))
  while seen < expected_records:
    batch = next(it)
    out.append(batch)
    seen += int((batch["_position"][:, 1] == 0).sum())
  return out


@pytest.mark.parametrize("fmt", ["wds", "tfrecord"])
def test_broken_records_are_skipped_and_counted(tmp_path, fmt):
  shards = fx.write_shards(str(tmp_path), fmt=fmt, num_shards=3, per_shard=6)
  spec = f"{fmt}:{tmp_path}/{{00000..00002}}.{'tar' if fmt == 'wds' else 'tfrecord'}"
  config = input_config(spec, batch=2, shuffle_buffer=1, shuffle_files=False, cycle_length=3)
  before = dict(pipeline.SKIP_LOG.counts)
  batches = one_epoch(config, len(shards["good_keys"]))
  epoch0 = [(k, s) for b in batches for k, s, p in zip(keys_of([b]), b["_skipped"], b["_position"])
            if p[1] == 0]
  assert sorted(k for k, _ in epoch0) == sorted(shards["good_keys"])
  # Every broken record precedes a good one, so the epoch's records carry all the skips.
  assert sum(int(s) for _, s in epoch0) == len(shards["broken_keys"]) == len(fx.BROKEN)
  reasons = {r: pipeline.SKIP_LOG.counts.get(r, 0) - before.get(r, 0)
             for r in pipeline.SKIP_LOG.counts}
  for reason in ("corrupt or truncated image", "not an image (unknown format)",
                 "missing or empty caption", "caption is not valid UTF-8"):
    assert reasons.get(reason, 0) >= 1, (reason, reasons)
  image = batches[0]["image"]
  assert image.shape == (2, 16, 16, 3) and image.dtype == np.float32
  assert np.all(np.isfinite(image)) and image.std() > 0.1
  assert batches[0]["text"].shape == (2, 32) and np.all(batches[0]["text"][:, 0] == TOKENIZER.cls_id)


def test_unreadable_shards_and_members_without_image(tmp_path, caplog):
  shards = fx.write_shards(str(tmp_path), num_shards=2, per_shard=8, broken=False)
  fx.truncate(shards["files"][1], 0.45)  # cut in the middle of a member
  fx.write_tar_without_image(str(tmp_path / "00002.tar"))
  with open(tmp_path / "00003.tar", "wb") as f:
    f.write(b"this is not a tar file at all" * 40)
  config = input_config(f"wds:{tmp_path}", batch=1, shuffle_buffer=1, shuffle_files=False,
                        cycle_length=4)
  before = dict(pipeline.SKIP_LOG.counts)
  it = pipeline.numpy_iterator(pipeline.train_dataset(config, TOKENIZER))
  keys, skipped = [], 0
  while True:
    b = next(it)
    if b["_position"][0, 1] > 0:
      break
    keys += keys_of([b])
    skipped += int(b["_skipped"].sum())
  # Shard 0 whole, shard 1 up to the cut, the good sample after the image-less one.
  assert set(shards["good_keys"][:8]) <= set(keys) and "good0" in keys
  assert len(keys) < 16
  new = {r: n - before.get(r, 0) for r, n in pipeline.SKIP_LOG.counts.items()
         if n > before.get(r, 0)}
  assert any(r.startswith("unreadable shard") for r in new), new
  assert any(r.startswith("no image member") for r in new), new
  assert skipped + int(b["_skipped"].sum()) >= 3  # the cut shard, the bad file, the image-less one


def test_csv_source_reads_relative_paths_and_skips_missing_files(tmp_path):
  for suffix in (".tsv", ".csv"):
    d = tmp_path / suffix[1:]
    data = fx.write_csv(str(d), num=6, missing=1, suffix=suffix)
    config = input_config(f"csv:{data['path']}", batch=1, shuffle_buffer=1, shuffle_files=False)
    batches = one_epoch(config, 6)
    got = [k for b in batches for k, p in zip(keys_of([b]), b["_position"]) if p[1] == 0]
    assert len(got) == 6 and sum(int(b["_skipped"].sum()) for b in batches) == 1
    texts = [t for b in batches for t in b["text"]]
    assert all(t[0] == TOKENIZER.cls_id for t in texts)
    comma = TOKENIZER([","])[0][1]
    # In the .csv the quoted caption's comma stays in the caption; the .tsv captions have none.
    assert all((comma in t) == (suffix == ".csv") for t in texts)


def csv_records(path, options=""):
  (source,) = sources.parse(f"csv:{path}{options}")
  return [r for unit in sources.units(source, 1)
          for r in sources.read_csv(unit, source.image_key, source.text_key)]


def test_csv_header_names_the_columns_as_open_clip_does(tmp_path):
  # open_clip: --csv-img-key filepath --csv-caption-key title, tab-separated, any column order.
  tsv = tmp_path / "train.tsv"
  tsv.write_text("title\tfilepath\tlicense\n"
                 "a red cube\timages/0.jpg\tcc-by\n"
                 "\n"
                 '"a ""quoted"" blue ball"\t/abs/1.jpg\tcc0\n'
                 "only one column\n")
  got = csv_records(tsv, "?image_key=filepath&text_key=title")
  assert [(r["image"], r["text"], r["problem"]) for r in got] == [
      (str(tmp_path / "images/0.jpg").encode(), b"a red cube", b""),
      (b"/abs/1.jpg", b'a "quoted" blue ball', b""),
      (b"", b"", b"row has 1 column(s), fewer than the header's 3")]
  assert [r["key"] for r in got] == [f"{tsv}:{n}".encode() for n in (2, 4, 5)]
  # Without the options, the header's known names are found (image column, caption column).
  assert [r["text"] for r in csv_records(tsv)][:2] == [b"a red cube", b'a "quoted" blue ball']
  csv_file = tmp_path / "pairs.csv"
  csv_file.write_text('caption,url\n"one, two",http://x/1.png\n')
  assert [(r["image"], r["text"]) for r in csv_records(csv_file)] == [
      (b"http://x/1.png", b"one, two")]


def test_csv_without_header_splits_at_the_first_delimiter(tmp_path):
  tsv = tmp_path / "pairs.tsv"
  tsv.write_text("images/0.jpg\ta caption\twith a tab\nimages/1.jpg\t\"quoted\"\n")
  got = csv_records(tsv)
  assert [(r["image"], r["text"]) for r in got] == [
      (str(tmp_path / "images/0.jpg").encode(), b"a caption\twith a tab"),
      (str(tmp_path / "images/1.jpg").encode(), b"quoted")]
  # Keys given for a file without those columns: one clear error when the source is listed.
  with pytest.raises(errors.DataError, match=r"must name the columns image_key='filepath' and "
                     r"text_key='title' \(missing: \['filepath', 'title'\]\)"):
    csv_records(tsv, "?image_key=filepath&text_key=title")
  with pytest.raises(errors.DataError, match="Set both"):
    csv_records(tsv, "?image_key=filepath")


def test_tfds_source_picks_one_caption_and_shares_by_process(shapes_data_dir):
  config = input_config("tfds:flip_shapes", batch=8, data_dir=shapes_data_dir)
  (batch,) = take(config, 1)
  assert batch["image"].shape == (8, 16, 16, 3)
  source = pipeline.parse_sources(config)[0]
  units = sources.units(source, 4)
  n = conftest.train_examples() // 4  # the training split's records in 4 equal units
  assert len(units) == 4 and units[0].endswith(f"#0#{n}") and units[3].endswith(f"#{3 * n}#{n}")


def test_webp_and_png_images_decode(tmp_path):
  with fx._writer(str(tmp_path / "00000.tar"), "wds") as write:  # pylint: disable=protected-access
    for i, fmt in enumerate(["WEBP", "PNG", "JPEG", "GIF", "BMP"]):
      write(f"k{i}", fx.image_bytes(i, fmt), fx.caption(i))
  config = input_config(f"wds:{tmp_path}/00000.tar", batch=5, shuffle_buffer=1)
  # The wds reader keeps jpg/jpeg/png/webp members by default; the writer named them by ext.
  config.input.image_key = "jpg,jpeg,png,webp,gif,bmp"
  (batch,) = take(config, 1)
  assert sorted(keys_of([batch])) == [f"k{i}" for i in range(5)]
  assert np.all(batch["_skipped"] == 0) and batch["image"].std() > 0.1


# --- determinism and resumption ------------------------------------------------------------

@pytest.mark.slow  # 4 pipelines, 96 batches
def test_stream_resumes_exactly_across_epochs(tmp_path):
  """Stopping after k batches and resuming from the saved state gives the same keys and pixels."""
  shards = fx.write_shards(str(tmp_path), num_shards=5, per_shard=7)
  config = input_config(f"wds:{tmp_path}/{{00000..00004}}.tar", batch=4, shuffle_buffer=8,
                        cycle_length=2)
  total = 24  # 96 examples: more than two epochs of 35 good records
  full = take(config, total)
  assert len({tuple(p) for b in full for p in b["_position"][:, 1:3]}) > 6  # epochs x chunks
  per_epoch = {}
  for b in full:
    for k, p in zip(keys_of([b]), b["_position"]):
      per_epoch.setdefault(int(p[1]), []).append(k)
  assert sorted(per_epoch[0]) == sorted(shards["good_keys"])  # each good record once per epoch
  assert per_epoch[0] != per_epoch[1]  # and reshuffled for the next
  for stop in (3, 9, 17):
    state = pipeline.InputState.start(1)
    for b in full[:stop]:
      state.update(b)
    state = pipeline.InputState.from_list(state.to_list())  # as through the checkpoint
    rest = take(config, total - stop, state)
    assert keys_of(full[stop:]) == keys_of(rest), stop
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in full[stop:]]),
                                  np.concatenate([b["image"] for b in rest]))
    assert state.skipped + sum(int(b["_skipped"].sum()) for b in rest) == \
        sum(int(b["_skipped"].sum()) for b in full)


@pytest.mark.slow  # 2 pipelines over 2 sources
def test_mixture_follows_weights_and_resumes(tmp_path, shapes_data_dir):
  a = fx.write_shards(str(tmp_path / "a"), num_shards=2, per_shard=20, broken=False)
  spec = f"wds:{tmp_path}/a?weight=3; tfds:flip_shapes?weight=1&data_dir={shapes_data_dir}"
  config = input_config(spec, batch=8)
  full = take(config, 30)
  src = np.concatenate([b["_position"][:, 0] for b in full])
  assert 0.65 < np.mean(src == 0) < 0.85  # 3:1
  assert set(keys_of(full)) & set(a["good_keys"])
  state = pipeline.InputState.start(2)
  for b in full[:11]:
    state.update(b)
  rest = take(config, 19, state)
  assert keys_of(rest) == keys_of(full[11:])


def test_input_state_round_trips_large_counts():
  state = pipeline.InputState(positions=[[3, 7, 2**40], [0, 1, 5]], consumed=13 * 2**31 + 5,
                              skipped=2**33)
  values = pipeline._split31(state.to_list())  # pylint: disable=protected-access
  assert max(values) < 2**31
  assert pipeline.InputState.from_list(pipeline._join31(values)) == state  # pylint: disable=protected-access


def test_restore_input_state_falls_back_when_sources_change(tmp_path):
  fx.write_shards(str(tmp_path), num_shards=2, broken=False)
  config = input_config(f"wds:{tmp_path}")
  state = pipeline.InputState(positions=[[1, 0, 4]], consumed=40, skipped=2)
  saved = pipeline.save_input_state(state, config)
  assert pipeline.restore_input_state(saved, config) == state
  other = input_config(f"wds:{tmp_path}/00000.tar")
  assert pipeline.restore_input_state(saved, other) == pipeline.InputState.start(1)
  assert pipeline.restore_input_state(None, config) == pipeline.InputState.start(1)


def test_eval_transform_resizes_short_side_and_centre_crops():
  import tensorflow as tf
  image = np.zeros((40, 80, 3), np.uint8)
  image[:, 20:60] = 255  # a white centre band as wide as the crop
  out = pipeline.center_crop(tf.constant(image), 20).numpy()
  assert out.shape == (20, 20, 3)
  assert out.min() > 200  # the central 40 px of 80 (resized to 20) is all white


def test_train_crop_stays_in_range_and_flip_is_seeded():
  import tensorflow as tf
  data = tf.constant(fx.image_bytes(3, "JPEG", size=(64, 96)))
  a = pipeline.random_resized_crop(data, tf.constant([1, 2]), 32, 0.5).numpy()
  b = pipeline.random_resized_crop(data, tf.constant([1, 2]), 32, 0.5).numpy()
  c = pipeline.random_resized_crop(data, tf.constant([5, 2]), 32, 0.5).numpy()
  assert a.shape == (32, 32, 3) and 0 <= a.min() and a.max() <= 255
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_processes_read_disjoint_shares_that_cover_the_data(tmp_path, monkeypatch):
  """Two simulated processes: each reads its own files; together every record once per epoch."""
  shards = fx.write_shards(str(tmp_path), num_shards=4, per_shard=5, broken=False)
  config = input_config(f"wds:{tmp_path}", batch=4, shuffle_buffer=4)
  seen = []
  for index in range(2):
    monkeypatch.setattr(sources.jax, "process_index", lambda i=index: i)
    monkeypatch.setattr(sources.jax, "process_count", lambda: 2)
    monkeypatch.setattr(pipeline.jax, "process_count", lambda: 2)
    batches = take(config, 5)  # local batch 2: 10 records, one epoch of this process's 2 files
    assert all(b["image"].shape[0] == 2 for b in batches)
    keys = [k for b in batches for k, p in zip(keys_of([b]), b["_position"]) if p[1] == 0]
    assert len(keys) == len(set(keys)) == 10
    seen.append(set(keys))
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(shards["good_keys"])


@pytest.mark.slow  # 3 pipelines to their error
def test_source_without_records_stops_with_a_message(tmp_path):
  import tarfile
  import tensorflow as tf
  for i in range(2):
    with tarfile.open(tmp_path / f"{i:05d}.tar", "w"):
      pass  # an empty tar: no records at all
  config = input_config(f"wds:{tmp_path}", batch=2)
  with pytest.raises(tf.errors.InvalidArgumentError, match="held no usable record"):
    take(config, 1)
  # In the training loop: one errors.DataError, its message the check's, without TF's wrapping.
  with pytest.raises(errors.DataError) as e:
    next(pipeline.reporting_errors(pipeline.numpy_iterator(
        pipeline.train_dataset(config, TOKENIZER)), config))
  assert str(e.value).startswith(
      f"The input pipeline of data source(s) wds:{tmp_path} failed: A whole epoch of data "
      f"source wds:{tmp_path} (2 file(s) in this process) held no usable record (see the "
      "'Skipped record' log lines)"), str(e.value)
  assert str(e.value).endswith("check config.input.data.") and "{{" not in str(e.value)
  # Before training: check_sources reads the first records and finds none.
  with pytest.raises(errors.DataError, match="none of the first 0 records of its 2 file"):
    pipeline.check_sources(config)


@pytest.mark.parametrize("fmt", ["wds", "tfrecord"])
def test_files_of_another_format_fail_before_training(tmp_path, fmt):
  """A `wds:` source that is no tar, a `tfrecord:` source that is a tar: one error at once."""
  if fmt == "wds":
    path = tmp_path / "00000.tar"
    path.write_bytes(b"<html>this is not a tar</html>" * 100)
  else:
    fx.write_shards(str(tmp_path / "tars"), num_shards=1, per_shard=3, broken=False)
    path = tmp_path / "00000.tfrecord"
    os.rename(tmp_path / "tars" / "00000.tar", path)
  config = input_config(f"{fmt}:{path}", batch=2)
  with pytest.raises(errors.DataError) as e:
    pipeline.check_sources(config)
  message = str(e.value)
  assert message.startswith(f"Data source {fmt}:{path}: none of the first 1 records of its 1 "
                            "file(s) is usable (1 x unreadable shard"), message
  assert "Check config.input.data" in message and "\n" not in message


@pytest.mark.parametrize("size", [0, 1, 2])
def test_prefetch_to_device_keeps_order_and_sends_size_batches_ahead(size):
  mesh = sharding.make_mesh(config_lib.base_config().mesh)  # data parallel, 8 devices
  pulled = []

  def host_batches():
    for i in range(5):
      pulled.append(i)
      yield {"image": np.full((8, 3), i, np.float32), "_position": np.full(8, i)}

  got = []
  for host_batch, device_batch in pipeline.prefetch_to_device(host_batches(), mesh, size):
    step = int(host_batch["_position"][0])
    # Batches up to `size` steps ahead were already sent while this one is trained on.
    assert len(pulled) == min(step + 1 + size, 5)
    assert set(device_batch) == {"image"}  # host bookkeeping stays on the host
    assert isinstance(device_batch["image"], jax.Array)
    got.append(float(device_batch["image"][0, 0]))
  assert got == [0, 1, 2, 3, 4]
