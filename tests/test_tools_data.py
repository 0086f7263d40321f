"""Data tools: ShardWriter's img2dataset formats, tools/make_shards.py and tools/build_vocab.py."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import random
import subprocess
import sys
import tarfile

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

import forkserver
from flip.data import shard_writer as shard_writer_lib
from flip.data import tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_tool(name: str):
  """Imports tools/{name}.py (tools/ is not a package)."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


make_shards = _load_tool("make_shards")
build_vocab = _load_tool("build_vocab")


def _run_tool(name: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([*forkserver.python(), os.path.join(ROOT, "tools", f"{name}.py"), *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)


def _tar_members(path: str) -> list[tuple[str, bytes]]:
  with tarfile.open(path) as tar:
    return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def _tfrecords(paths: list[str], image_key: str = "jpg") -> list[dict[str, bytes]]:
  spec = {k: tf.io.FixedLenFeature([], tf.string) for k in ("key", image_key, "txt")}
  return [{k: v.numpy() for k, v in tf.io.parse_single_example(r, spec).items()}
          for r in tf.data.TFRecordDataset(paths)]


def _image_bytes(fmt: str, size=(40, 30), mode="RGB", seed=0) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
  image = Image.fromarray(pixels).convert(mode)
  out = io.BytesIO()
  image.save(out, fmt)
  return out.getvalue()


# ShardWriter.

SAMPLES = [(f"k{i:03d}", bytes([i]) * (i + 1), f"caption {i} café") for i in range(10)]


def test_wds_shards_hold_image_txt_json_per_sample(tmp_path):
  with shard_writer_lib.ShardWriter(str(tmp_path), "wds", samples_per_shard=4) as writer:
    for key, image, caption in SAMPLES:
      writer.write(key, image, caption, meta={"n": int(key[1:])})
  paths = writer.close()
  assert paths == [str(tmp_path / f"{i:05d}.tar") for i in range(3)]
  members = [m for p in paths for m in _tar_members(p)]
  assert [len(_tar_members(p)) for p in paths] == [12, 12, 6]
  for i, (key, image, caption) in enumerate(SAMPLES):
    (img_name, img), (txt_name, txt), (json_name, meta) = members[3 * i: 3 * i + 3]
    assert (img_name, txt_name, json_name) == (f"{key}.jpg", f"{key}.txt", f"{key}.json")
    assert img == image and txt.decode("utf-8") == caption
    assert json.loads(meta) == {"key": key, "caption": caption, "n": i}


def test_tfrecord_shards_hold_key_image_txt(tmp_path):
  writer = shard_writer_lib.ShardWriter(str(tmp_path), "tfrecord", samples_per_shard=4)
  for key, image, caption in SAMPLES:
    writer.write(key, image, caption)
  paths = writer.close()
  assert paths == [str(tmp_path / f"{i:05d}.tfrecord") for i in range(3)]
  assert [len(_tfrecords([p])) for p in paths] == [4, 4, 2]
  records = _tfrecords(paths)
  assert [(r["key"].decode(), r["jpg"], r["txt"].decode("utf-8")) for r in records] == SAMPLES
  with pytest.raises(ValueError, match="closed"):
    writer.write("k999", b"x", "late")


def test_invalid_utf8_caption_is_written_raw(tmp_path):
  bad = b"caf\xe9 \xff"
  with shard_writer_lib.ShardWriter(str(tmp_path / "wds"), "wds", 10) as w:
    w.write("a", b"img", bad, image_ext="png")
  members = dict(_tar_members(str(tmp_path / "wds" / "00000.tar")))
  assert members["a.png"] == b"img" and members["a.txt"] == bad
  assert json.loads(members["a.json"])["caption"] is None
  with shard_writer_lib.ShardWriter(str(tmp_path / "tfr"), "tfrecord", 10) as w:
    w.write("a", b"img", bad)
  assert _tfrecords([str(tmp_path / "tfr" / "00000.tfrecord")])[0]["txt"] == bad


def test_shard_writer_errors_and_keys(tmp_path):
  with pytest.raises(ValueError, match="wds, tfrecord"):
    shard_writer_lib.ShardWriter(str(tmp_path), "parquet")
  assert shard_writer_lib.sample_key(12_345, 10_000) == "000012345"
  assert shard_writer_lib.sample_key(25, 10) == "000025"
  with shard_writer_lib.ShardWriter(str(tmp_path), "wds", 10) as w:
    assert w.close() == []  # nothing written, no empty shard


# make_shards.

CAPTIONS = {"a": "A red square", "b": "A green circle, small", "c": "Une île — café"}


def _make_image_folder(root) -> dict:
  """Good images a.jpg, b.png, sub/c.bmp; broken and uncaptioned ones beside them."""
  (root / "sub").mkdir(parents=True)
  files = {"a.jpg": _image_bytes("JPEG", (40, 30), seed=1),
           "b.png": _image_bytes("PNG", (20, 50), mode="RGBA", seed=2),
           "sub/c.bmp": _image_bytes("BMP", (32, 32), seed=3),
           "corrupt.jpg": random.Random(0).randbytes(500),
           "truncated.jpg": _image_bytes("JPEG", (200, 200), seed=4)[:700],
           "nocap.png": _image_bytes("PNG", seed=5),
           "empty.jpg": _image_bytes("JPEG", seed=6)}
  for name, data in files.items():
    (root / name).write_bytes(data)
  for name, caption in [("a", CAPTIONS["a"]), ("b", CAPTIONS["b"]), ("sub/c", CAPTIONS["c"]),
                        ("corrupt", "x"), ("truncated", "y"), ("empty", "  \n")]:
    (root / f"{name}.txt").write_text(caption + "\n", encoding="utf-8")
  (root / "notes.md").write_text("not an image")
  return files


def test_images_dir_to_wds(tmp_path):
  files = _make_image_folder(tmp_path / "in")
  skips = make_shards.Skips()
  samples = make_shards.find_images(str(tmp_path / "in"), skips)
  assert len(samples) == 6 and dict(skips.counts) == {"no_caption_file": 1}
  out = str(tmp_path / "out")
  stats = make_shards.convert(samples, out, "wds", samples_per_shard=2, workers=4, skips=skips)
  assert stats["written"] == 3 and stats["shards"] == 2
  assert stats["skipped"] == {"empty_caption": 1, "no_caption_file": 1, "unreadable_image": 2}
  assert any("truncated.jpg" in s for s in stats["skipped_examples"]["unreadable_image"])
  assert stats["data"] == f"wds:{out}/{{00000..00001}}.tar"
  assert json.loads((tmp_path / "out" / "stats.json").read_text())["written"] == 3

  members = _tar_members(f"{out}/00000.tar") + _tar_members(f"{out}/00001.tar")
  # img2dataset keys: 5-digit shard, then the in-shard index with the digits of 2 - 1.
  assert [n.split(".")[0] for n, _ in members[::3]] == ["000000", "000001", "000010"]
  by_caption = {}
  for (img_name, img), (_, txt), (_, meta) in zip(members[::3], members[1::3], members[2::3]):
    by_caption[txt.decode()] = (img_name.split(".", 1)[1], img, json.loads(meta))
  assert set(by_caption) == set(CAPTIONS.values())
  ext, img, _ = by_caption[CAPTIONS["a"]]
  assert ext == "jpg" and img == files["a.jpg"]  # copied byte for byte
  ext, img, _ = by_caption[CAPTIONS["b"]]
  assert ext == "png" and img == files["b.png"]
  ext, img, meta = by_caption[CAPTIONS["c"]]
  assert ext == "jpg" and Image.open(io.BytesIO(img)).format == "JPEG"  # BMP re-encoded
  assert meta["image_path"].endswith("c.bmp")
  # Everything written decodes with the trainer's decoder.
  for _, img, _ in by_caption.values():
    assert tf.io.decode_image(img, channels=3, expand_animations=False).shape[-1] == 3

  with pytest.raises(ValueError, match="--overwrite"):
    make_shards.convert(samples, out, "wds")


def test_csv_with_header_relative_paths_resize_and_tfrecord(tmp_path):
  files = _make_image_folder(tmp_path / "in")
  rows = ["filepath,title", f"a.jpg,{CAPTIONS['a']}", f'b.png,"{CAPTIONS["b"]}"',
          f"sub/c.bmp,{CAPTIONS['c']}", "missing.jpg,gone", "truncated.jpg,y", "empty.jpg,", ""]
  (tmp_path / "in" / "list.csv").write_text("\n".join(rows), encoding="utf-8")
  skips = make_shards.Skips()
  samples = make_shards.read_csv(str(tmp_path / "in" / "list.csv"), skips)
  assert [os.path.relpath(s.image_path, tmp_path / "in") for s in samples] == [
      "a.jpg", "b.png", "sub/c.bmp", "missing.jpg", "truncated.jpg", "empty.jpg"]
  assert samples[1].caption == CAPTIONS["b"]  # quoted comma kept

  out = str(tmp_path / "tfr")
  stats = make_shards.convert(samples, out, "tfrecord", samples_per_shard=10, resize=16,
                              shuffle=False, skips=skips)
  assert stats["written"] == 3 and stats["shards"] == 1
  assert stats["skipped"] == {"empty_caption": 1, "missing_file": 1, "unreadable_image": 1}
  assert stats["data"] == f"tfrecord:{out}/*.tfrecord"
  records = _tfrecords([f"{out}/00000.tfrecord"])
  assert [r["key"] for r in records] == [b"000000", b"000001", b"000002"]
  assert [r["txt"].decode() for r in records] == [CAPTIONS[k] for k in "abc"]
  for r, (w, h) in zip(records, [(40, 30), (20, 50), (32, 32)]):
    image = Image.open(io.BytesIO(r["jpg"]))
    assert image.format == "JPEG" and min(image.size) == 16
    assert abs(image.size[0] / image.size[1] - w / h) < 0.1

  # Without --resize, TFRecords keep JPEGs as they are and re-encode PNG/BMP to JPEG.
  stats = make_shards.convert(samples[:3], str(tmp_path / "tfr2"), "tfrecord", shuffle=False)
  records = _tfrecords([str(tmp_path / "tfr2" / "00000.tfrecord")])
  assert records[0]["jpg"] == files["a.jpg"]
  assert all(Image.open(io.BytesIO(r["jpg"])).format == "JPEG" for r in records)


def test_tsv_without_header(tmp_path):
  image = tmp_path / "x.jpg"
  image.write_bytes(_image_bytes("JPEG"))
  (tmp_path / "list.tsv").write_text(f"{image}\ta caption\twith a tab\nbadrow\n")
  skips = make_shards.Skips()
  samples = make_shards.read_csv(str(tmp_path / "list.tsv"), skips)
  assert samples == [make_shards.Sample(str(image), "a caption\twith a tab")]
  assert dict(skips.counts) == {"malformed_row": 1}


@pytest.mark.slow
def test_missing_csv_is_a_clear_error(tmp_path):
  missing = str(tmp_path / "nope.tsv")
  with pytest.raises(ValueError, match="nope.tsv"):
    make_shards.read_csv(missing, make_shards.Skips())
  result = _run_tool("make_shards", f"--csv={missing}", f"--output_dir={tmp_path / 'out'}")
  assert result.returncode != 0 and missing in result.stderr


@pytest.mark.slow
def test_make_shards_cli(tmp_path):
  _make_image_folder(tmp_path / "in")
  out = tmp_path / "out"
  result = _run_tool("make_shards", f"--images_dir={tmp_path / 'in'}", f"--output_dir={out}",
                     "--samples_per_shard=2", "--noshuffle")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "Wrote 3 samples in 2 wds shards" in result.stdout
  assert "unreadable_image: 2" in result.stdout and "no_caption_file: 1" in result.stdout
  assert f"--config.input.data='wds:{out}/{{00000..00001}}.tar'" in result.stdout
  assert sorted(os.listdir(out)) == ["00000.tar", "00001.tar", "stats.json"]


# build_vocab.

def _corpus(n: int = 500) -> list[str]:
  rng = random.Random(0)
  syllables = ["ka", "lo", "mi", "ren", "tus", "vo", "zel", "pra", "dun", "shi", "gor", "ba"]
  words = sorted({"".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(400)})
  words += ["Café", "naïve", "Zürich", "photo", "dog", "cat"]
  return [" ".join(rng.choices(words, k=rng.randint(3, 9))).capitalize() +
          rng.choice([".", "!", ""]) for _ in range(n)]


def test_build_vocab_loads_in_tokenizer_without_unk(tmp_path):
  corpus = _corpus()
  vocab = build_vocab.build_vocab(corpus, 300, lower_thresh=2)
  assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  assert 200 < len(vocab) <= 300 and len(set(vocab)) == len(vocab)
  assert "cafe" in vocab and "zurich" in vocab and "café" not in vocab
  path = str(tmp_path / "vocab.txt")
  build_vocab.write_vocab(vocab, path)
  tok = tokenizer_lib.Tokenizer(path, max_len=32)
  assert tok.vocab_size == len(vocab)
  ids = tok(corpus[:50] + ["CAFÉ naive zurich"])
  assert 1 not in ids  # [UNK]
  assert (ids[:, 0] == 2).all()  # [CLS]


@pytest.mark.slow
def test_build_vocab_cli(tmp_path):
  captions = tmp_path / "captions.tsv"
  captions.write_text("".join(f"img{i}.jpg\t{c}\n" for i, c in enumerate(_corpus())),
                      encoding="utf-8")
  out = tmp_path / "v" / "vocab.txt"
  result = _run_tool("build_vocab", f"--captions={captions}", "--column=-1", "--vocab_size=300",
                     "--lower_thresh=2", f"--output={out}")
  assert result.returncode == 0, result.stderr[-2000:]
  vocab = out.read_text(encoding="utf-8").splitlines()
  assert vocab[0] == "[PAD]" and "img0" not in vocab and "cafe" in vocab
  assert (f"--config.input.vocab_path={out} --config.model.text.vocab_size={len(vocab)}"
          in result.stdout)
