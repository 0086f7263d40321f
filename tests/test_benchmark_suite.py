"""CLIP_benchmark's webdataset sets as evaluation splits, the benchmark suite's table, and CLIP's
logistic-regression probe against scikit-learn."""

import csv
import io
import json
import os
import subprocess

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import forkserver
from flip import cli
from flip import config_lib
from flip import errors
from flip.data import pipeline
from flip.evaluation import benchmark
from flip.evaluation import data as data_lib
from flip.evaluation import logistic
from shard_fixtures import write_clip_benchmark_set

CLASSES = ["red circle", "blue square", "green triangle"]


def picture(index: int, ext: str, size=(40, 52)) -> tuple[bytes, np.ndarray]:
  rng = np.random.default_rng(index)
  array = (rng.random((*size, 3)) * 255).astype(np.uint8)
  out = io.BytesIO()
  fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]
  Image.fromarray(array).save(out, fmt, **({"lossless": True} if ext == "webp" else {}))
  return out.getvalue(), array


def expected_image(data: bytes) -> np.ndarray:
  """The evaluation transform of one encoded image, computed on its own."""
  return pipeline.normalize(pipeline.center_crop(pipeline.decode(tf.constant(data)), 32)).numpy()


def classification_set(root, n=25, exts=("webp", "png", "jpg")):
  samples = [(picture(i, exts[i % len(exts)])[0], exts[i % len(exts)], i % 3) for i in range(n)]
  write_clip_benchmark_set(str(root), "test", samples, classnames=CLASSES,
                           templates=["a photo of a {c}.", "itap of a {c}."])
  return samples


def test_webdataset_classification_set_reads_like_clip_benchmark(tmp_path):
  samples = classification_set(tmp_path / "wds_shapes")  # 3 shards: 10 + 10 + 5
  split = data_lib.open_split(f"wds:{tmp_path}/wds_shapes", "test", None, 32, label_key="label")
  assert split.num_examples == 25 and len(split.shards) == 3
  assert split.class_names() == CLASSES
  assert split.templates() == ("a photo of a {}.", "itap of a {}.")
  chunks = list(split.chunks(chunk=8))
  assert [len(c["label"]) for c in chunks] == [8, 8, 8, 1]
  got = split.all()
  assert got["label"].tolist() == [s[2] for s in samples]
  for i in (0, 1, 2, 24):  # webp, png, jpg
    np.testing.assert_allclose(got["image"][i], expected_image(samples[i][0]), atol=1e-6)
  assert split.skipped == 0
  few = data_lib.open_split(f"wds:{tmp_path}/wds_shapes", "test", None, 32, label_key="label",
                            max_examples=12)
  assert few.all()["label"].tolist() == [s[2] for s in samples[:12]]


def test_webdataset_set_without_nshards_reads_shards_in_numeric_order(tmp_path):
  samples = [(picture(i, "png")[0], "png", i % 3) for i in range(12)]
  write_clip_benchmark_set(str(tmp_path), "test", samples, classnames=CLASSES, per_shard=1,
                           nshards_file=False)  # 0.tar ... 11.tar: 10.tar sorts after 9.tar
  split = data_lib.open_split(f"wds:{tmp_path}", "test", None, 32, label_key="label")
  assert split.all()["label"].tolist() == [i % 3 for i in range(12)]
  assert split.templates() is None


def test_unusable_webdataset_samples_are_skipped_and_counted(tmp_path):
  good = [(picture(i, "png")[0], "png", i % 3) for i in range(6)]
  bad = [(b"\x89PNG\r\n\x1a\n broken", "png", 1),  # does not decode
         (picture(7, "png")[0], "png", b"cat"),  # .cls is not a class index
         (None, "png", 2)]  # no image member
  write_clip_benchmark_set(str(tmp_path), "test", good[:3] + bad + good[3:], classnames=CLASSES)
  split = data_lib.open_split(f"wds:{tmp_path}", "test", None, 32, label_key="label")
  got = split.all()
  assert got["label"].tolist() == [s[2] for s in good]
  assert split.skipped == 3


def test_webdataset_retrieval_set_pads_and_cuts_captions(tmp_path):
  captions = [["one", "two"], ["a", "b", "c", "d", "e", "f"], ["", "only one", " "]]
  samples = [(picture(i, "jpg")[0], "jpg", c) for i, c in enumerate(captions)]
  write_clip_benchmark_set(str(tmp_path), "test", samples, kind="retrieval")
  split = data_lib.open_split(f"wds:{tmp_path}", "test", None, 32, text_key="captions",
                              captions_per_image=5)
  got = split.all()["captions"].astype(str).tolist()
  assert got == [["one", "two", "", "", ""], ["a", "b", "c", "d", "e"],
                 ["only one", "", "", "", ""]]
  with pytest.raises(errors.DataError, match="retrieval set .* zeroshot or linear_probe|"
                     "is a retrieval set"):
    data_lib.open_split(f"wds:{tmp_path}", "test", None, 32, label_key="label")


@pytest.mark.parametrize("change, error, message", [
    ("no_root", errors.NotFoundError, "does not exist"),
    ("no_split", errors.DataError, r"no split 'validation'; its splits are \['test'\]"),
    ("nshards_too_many", errors.NotFoundError, "says 5 shards but"),
    ("no_classnames", errors.DataError, "classnames.txt"),
    ("classification_as_retrieval", errors.DataError, "not a retrieval set"),
])
def test_bad_webdataset_sets_fail_clearly(tmp_path, change, error, message):
  root = tmp_path / "set"
  classification_set(root, n=4)
  split, kwargs = "test", {"label_key": "label"}
  if change == "no_root":
    root = tmp_path / "nowhere"
  elif change == "no_split":
    split = "validation"
  elif change == "nshards_too_many":
    (root / "test" / "nshards.txt").write_text("5\n")
  elif change == "no_classnames":
    os.remove(root / "classnames.txt")
  else:
    kwargs = {"text_key": "captions"}
  with pytest.raises(error, match=message):
    data_lib.open_split(f"wds:{root}", split, None, 32, **kwargs).class_names()


def test_logistic_probe_matches_scikit_learn():
  sklearn = pytest.importorskip("sklearn.linear_model")
  rng = np.random.default_rng(0)
  k, d = 10, 48
  centres = rng.normal(size=(k, d)) * 0.35

  def features(n):
    y = rng.integers(0, k, n)
    x = centres[y] + rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y

  (train_x, train_y), (test_x, test_y) = features(1500), features(600)
  for c in (0.05, 3.0):  # one fit: the same objective reaches the same predictions
    ours = logistic.scores(logistic.fit(train_x, train_y, k, c), test_x).argmax(axis=1)
    theirs = sklearn.LogisticRegression(C=c, max_iter=1000).fit(train_x, train_y)
    assert abs(np.mean(ours == test_y) - theirs.score(test_x, test_y)) <= 0.005
    assert np.mean(ours == theirs.predict(test_x)) >= 0.99
  out = logistic.probe(train_x, train_y, test_x, test_y, k)
  assert set(out) == {"acc1", "acc5", "mean_per_class_recall", "C"}
  assert 1e-6 <= out["C"] <= 1e6
  theirs = sklearn.LogisticRegression(C=out["C"], max_iter=1000).fit(train_x, train_y)
  assert abs(out["acc1"] - theirs.score(test_x, test_y)) <= 0.005
  assert out["acc1"] > 0.5  # well above chance (0.1): the chosen C is a sensible one


def test_logistic_probe_picks_c_on_the_validation_split():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(200, 8)).astype(np.float32)
  y = (x[:, 0] > 0).astype(int)
  best, tried = logistic.choose_c(x[:150], y[:150], x[150:], y[150:], 2)
  assert tried[best] == max(tried.values())
  assert len(tried) == 13 + 4  # every decade, then two refinements around the best
  assert best == min(c for c, acc in tried.items() if acc == tried[best])


def test_task_list_fills_in_the_webdataset_root_and_selects():
  task_list = config_lib.load_recipe(config_lib.recipe_path("clip_benchmark",
                                                            config_lib.TASK_LISTS))
  with pytest.raises(errors.ConfigError, match="--tasks.wds_root"):
    benchmark.task_options(task_list)
  task_list.wds_root = "/data/cb/"
  tasks = benchmark.task_options(task_list, ["imagenet1k", "flickr30k"])
  assert list(tasks) == ["imagenet1k", "flickr30k"]
  assert list(benchmark.task_options(task_list))[:3] == ["imagenet1k", "imagenetv2", "imagenet-a"]
  assert tasks["imagenet1k"]["dataset"] == "wds:/data/cb/wds_imagenet1k"
  for options in benchmark.task_options(task_list).values():  # every task is a valid evaluator
    config_lib.resolve_evaluator("t", options)
  for options in benchmark.task_options(config_lib.load_recipe(
      config_lib.recipe_path("clip_benchmark", config_lib.TASK_LISTS), "tfds")).values():
    config_lib.resolve_evaluator("t", options)
  with pytest.raises(errors.ConfigError, match="unknown task"):
    benchmark.task_options(task_list, ["imagenet_21k"])
  argv = cli.recipe_argv(["prog", "--tasks=demo"], ("tasks",), config_lib.TASK_LISTS)
  assert argv[1].endswith(os.path.join("benchmarks", "demo.py"))


def test_results_table_uses_clip_benchmark_columns(tmp_path):
  result = {"workdir": "/runs/x", "step": 7, "rows": [
      {"task": "in1k", "dataset": "wds:/d/wds_imagenet1k", "split": "test",
       "type": "zeroshot_classification", "acc1": 0.5, "acc5": 0.75,
       "mean_per_class_recall": 0.5, "images": 10, "seconds": 2.0, "images_per_s": 5.0,
       "status": "ok"},
      {"task": "coco", "dataset": "coco_captions", "split": "test", "type": "zeroshot_retrieval",
       "image_retrieval_recall@1": 0.25, "text_retrieval_recall@1": 0.125, "images": 4,
       "seconds": 1.0, "images_per_s": 4.0, "status": "ok"},
      {"task": "probe", "dataset": "cifar10", "split": "test", "type": "linear_probe",
       "status": "missing: TFDS data set 'cifar10' is not prepared"}]}
  paths = benchmark.write(result, str(tmp_path / "out"))
  assert json.loads(open(paths[0]).read()) == result
  with open(paths[1]) as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0])[:8] == ["task", "dataset", "split", "type", "acc1", "acc5",
                               "mean_per_class_recall", "image_retrieval_recall@1"]
  assert rows[1]["text_retrieval_recall@1"] == "0.125" and rows[0]["acc1"] == "0.5"
  table = open(paths[2]).read()
  assert "| in1k | test | zeroshot_classification | 50.0 | 75.0 | 50.0 | - | - |" in table
  assert "- probe: missing: TFDS data set 'cifar10' is not prepared" in table


def test_bad_linear_probe_method_is_a_config_error():
  with pytest.raises(errors.ConfigError, match="'ridge' or 'logistic'"):
    config_lib.resolve_evaluator("p", dict(type="linear_probe", every_steps=1, dataset="x",
                                           method="svm"))


@pytest.mark.slow
def test_evaluation_benchmark_reports_rates_and_an_imagenet_estimate(tmp_path):
  out = tmp_path / "eval.json"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [*forkserver.python(), "tools/benchmark_eval.py", "--config=demo", "--images=24",
       "--prompts=64", "--batch=16", f"--json={out}"],
      cwd=root, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  got = json.loads(out.read_text())
  assert got["images"] == 24 and got["images_per_s"] > 0 and got["prompts_per_s"] > 0
  want = 80_000 / got["prompts_per_s"] + 50_000 / got["images_per_s"]
  assert got["imagenet_zeroshot_estimate_s"] == pytest.approx(want, rel=0.01)
  assert got["cpu_model"] and "ImageNet-1k zero-shot" in result.stdout
