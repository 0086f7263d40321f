"""Evaluators end to end: sharded encoding counts every example once, standalone evaluation,
clear errors, and training that goes on without a missing evaluation data set."""

import json
import os
import shutil
import subprocess

import jax
import ml_collections
import numpy as np
import pytest

import forkserver
from flip import sharding
from flip import train
from flip.data import tokenizer as tokenizer_lib
from flip.evaluation import data as data_lib
from flip.evaluation import embed
from flip.evaluation import linear_probe
from flip.evaluation import metrics
from flip.evaluation import retrieval
from flip.evaluation import suite
from flip.evaluation import zeroshot
from flip.configs import demo
from flip.models import flip as flip_lib
from conftest import jit_apply
from shard_fixtures import write_clip_benchmark_set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def local_config(data_dir):
  c = demo.get_config("local")
  c.input.data_dir = data_dir
  return c


@pytest.fixture(scope="module")
def model_and_params():
  config = demo.get_config("local")
  model = flip_lib.from_config(config.model)
  params = jax.jit(model.init)({"params": jax.random.key(0)}, np.zeros((1, 32, 32, 3), np.float32),
                               np.zeros((1, 32), np.int32))["params"]
  return config, model, params


def test_sharded_encoder_embeds_every_example_once(model_and_params):
  """37 images on 8 devices in batches of 16: padded last batch, nothing lost or doubled."""
  config, model, params = model_and_params
  mesh = sharding.make_mesh(config.mesh)
  assert mesh.size == 8
  encoder = embed.Embedder(model, tokenizer_lib.Tokenizer(None, 32), mesh, 16)
  images = np.random.default_rng(0).standard_normal((37, 32, 32, 3)).astype(np.float32)
  got = encoder.images(params, images)
  want = np.asarray(jit_apply(model, {"params": params}, images,
                             method=flip_lib.FLIP.encode_image))
  assert got.shape == want.shape == (37, config.model.embed_dim)
  np.testing.assert_allclose(got, want, atol=2e-5)
  texts = [f"a red shape number {i}" for i in range(21)]
  want_t = np.asarray(jit_apply(model, {"params": params}, encoder.tokenizer(texts),
                                method=flip_lib.FLIP.encode_text))
  np.testing.assert_allclose(encoder.texts(params, texts), want_t, atol=2e-5)


def test_zeroshot_retrieval_and_probe_match_a_direct_computation(shapes_data_dir,
                                                                 model_and_params):
  config, model, params = model_and_params
  config.input.data_dir = shapes_data_dir
  mesh = sharding.make_mesh(config.mesh)
  encoder = embed.Embedder(model, tokenizer_lib.Tokenizer(None, 32), mesh, 16)
  zs = suite.make_evaluator(dict(type="zeroshot", every_steps=1, dataset="flip_shapes",
                                split="validation", max_examples=45,
                                templates=("a {}.", "a photo of a {}.")), config, encoder)
  assert isinstance(zs, zeroshot.ZeroShot)
  got = zs(params)
  examples = data_lib.open_split("flip_shapes", "validation", shapes_data_dir, 32,
                                 label_key="label", text_key="captions", max_examples=45,
                                 captions_per_image=3).all()
  assert len(examples["image"]) == 45
  image_emb = encoder.images(params, examples["image"])
  class_emb = zeroshot.class_embeddings(encoder, params, zs.class_names, zs.templates)
  assert got == metrics.classification(image_emb @ class_emb.T, examples["label"], ks=(1, 5))
  assert set(got) == {"acc1", "acc5", "mean_per_class_recall"}

  rt = suite.make_evaluator(dict(type="retrieval", every_steps=1, dataset="flip_shapes",
                                split="validation", max_examples=45, captions_per_image=3),
                           config, encoder)
  assert isinstance(rt, retrieval.Retrieval)
  captions = [c.decode() for c in examples["captions"].reshape(-1)]
  want = metrics.retrieval(image_emb, encoder.texts(params, captions), np.repeat(np.arange(45), 3))
  assert rt(params) == want

  probe = suite.make_evaluator(dict(type="linear_probe", every_steps=1, dataset="flip_shapes",
                                   train_split="train", max_train_examples=300,
                                   test_split="validation", max_test_examples=45, shots=(2,)),
                              config, encoder)
  assert isinstance(probe, linear_probe.LinearProbe)
  out = probe(params)
  assert set(out) == {"acc1", "2shot_acc1"} and 0 <= out["acc1"] <= 1


@pytest.mark.parametrize("ev, error, message", [
    (dict(type="zeroshot", dataset="no_such_data_set_xyz"), ValueError, "Unknown TFDS data set"),
    (dict(type="zeroshot", dataset="flip_shapes", split="validation", label_key="colour"),
     ValueError, "no feature"),
    (dict(type="zeroshot", dataset="flip_shapes", split="validation", class_names=("a", "b")),
     ValueError, "2"),
    (dict(type="zeroshot", dataset="flip_shapes", split="validation", templates="long"),
     ValueError, "short"),
    (dict(type="retrieval", dataset="flip_shapes", split="nope"), ValueError, "no split"),
    (dict(type="probe", dataset="flip_shapes"), ValueError, "linear_probe"),
])
def test_bad_evaluator_configs_fail_clearly(shapes_data_dir, tmp_path, ev, error, message):
  config = local_config(shapes_data_dir)
  config.evals = ml_collections.ConfigDict({"bad": dict(ev, every_steps=5)})
  with pytest.raises(error, match=message):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.slow
def test_training_goes_on_without_a_missing_evaluation_data_set(shapes_data_dir, tmp_path):
  config = local_config(shapes_data_dir)
  config.total_steps = 4
  config.evals.imagenet = dict(type="zeroshot", dataset="imagenet2012", split="validation",
                               class_names="imagenet", every_steps=2)
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["step"] == 4 and "zeroshot/acc1" in summary
  assert not any(k.startswith("imagenet/") for k in summary)


TASKS = """
import ml_collections
from ml_collections import config_dict

def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.wds_root = config_dict.placeholder(str)
  c.data_dir = {data_dir!r}
  templates = ("a photo of a {{}}.", "a {{}}.")
  shapes = dict(dataset="flip_shapes", split="validation", max_examples=40)
  c.tasks = dict(
      tfds_zeroshot=dict(shapes, type="zeroshot", templates=templates),
      wds_zeroshot=dict(type="zeroshot", dataset="wds:{{wds_root}}/wds_shapes", split="test"),
      tfds_retrieval=dict(shapes, type="retrieval"),
      wds_retrieval=dict(type="retrieval", dataset="wds:{{wds_root}}/wds_shapes_captions",
                         split="test"),
      wds_probe=dict(type="linear_probe", dataset="wds:{{wds_root}}/wds_shapes",
                     train_split="train", test_split="test", method="logistic"),
      imagenet=dict(type="zeroshot", dataset="imagenet2012", split="validation",
                    class_names="imagenet"))
  return c
"""


def write_shapes_as_clip_benchmark_sets(data_dir: str, root: str) -> None:
  """flip_shapes examples (their encoded PNGs, unchanged) in CLIP_benchmark's layout."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder("flip_shapes", data_dir=data_dir)
  names = [n.replace("_", " ") for n in builder.info.features["label"].names]

  def examples(split, n):
    ds = builder.as_dataset(split=f"{split}[:{n}]", shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
    return [(ex["image"], "png", ex) for ex in tfds.as_numpy(ds)]

  for split, tfds_split, n in (("test", "validation", 40), ("train", "train", 60)):
    samples = examples(tfds_split, n)
    write_clip_benchmark_set(f"{root}/wds_shapes", split,
                             [(img, ext, int(ex["label"])) for img, ext, ex in samples],
                             classnames=names, templates=["a photo of a {c}.", "a {c}."])
  write_clip_benchmark_set(
      f"{root}/wds_shapes_captions", "test",
      [(img, ext, [c.decode() for c in ex["captions"]]) for img, ext, ex in
       examples("validation", 40)], kind="retrieval")


@pytest.mark.slow
def test_standalone_evaluation_and_benchmark_suite_of_a_demo_checkpoint(shapes_data_dir,
                                                                       local_run, tmp_path):
  shared, summary = local_run  # the :local demo trained 20 steps
  run = tmp_path / "run"
  shutil.copytree(shared, run)  # flip.evaluate adds its TensorBoard events to the workdir
  env = dict(os.environ, TFDS_DATA_DIR=shapes_data_dir)
  result = subprocess.run(
      [*forkserver.python(), "-m", "flip.evaluate", f"--workdir={run}",
       f"--json={tmp_path}/metrics.json"], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  got = json.loads((tmp_path / "metrics.json").read_text())
  assert got["step"] == 20
  for key in ("zeroshot/acc1", "retrieval/text_retrieval_recall@1",
              "retrieval/image_retrieval_recall@10"):
    assert got[key] == pytest.approx(summary[key], abs=1e-6), key
  assert "zeroshot/acc1:" in result.stdout

  # The benchmark suite: TFDS and CLIP_benchmark webdataset sets of the same images agree.
  write_shapes_as_clip_benchmark_sets(shapes_data_dir, str(tmp_path / "cb"))
  (tmp_path / "tasks.py").write_text(TASKS.format(data_dir=shapes_data_dir))
  result = subprocess.run(
      [*forkserver.python(), "-m", "flip.benchmark_suite", f"--workdir={run}",
       f"--tasks={tmp_path}/tasks.py", f"--tasks.wds_root={tmp_path}/cb",
       f"--output={tmp_path}/table"], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  table = json.loads((tmp_path / "table" / "results.json").read_text())
  assert table["step"] == 20
  rows = {row["task"]: row for row in table["rows"]}
  assert rows["imagenet"]["status"].startswith("missing: ")
  for tfds_task, wds_task, keys in (
      ("tfds_zeroshot", "wds_zeroshot", ("acc1", "acc5", "mean_per_class_recall")),
      ("tfds_retrieval", "wds_retrieval", ("image_retrieval_recall@1", "text_retrieval_recall@5"))):
    for key in keys:
      assert rows[wds_task][key] == pytest.approx(rows[tfds_task][key], abs=1e-6), (wds_task, key)
    assert rows[wds_task]["images"] == 40 and rows[wds_task]["images_per_s"] > 0
  assert {"acc1", "acc5", "mean_per_class_recall", "C"} <= set(rows["wds_probe"])
  assert rows["wds_probe"]["images"] == 100  # 60 training and 40 test images
  header = (tmp_path / "table" / "results.csv").read_text().splitlines()[0].split(",")
  assert header[:5] == ["task", "dataset", "split", "type", "acc1"]
  assert "| wds_zeroshot | test | zeroshot_classification |" in result.stdout

  empty = subprocess.run([*forkserver.python(), "-m", "flip.evaluate",
                          f"--workdir={tmp_path}/none"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert empty.returncode == 1 and "config.json" in empty.stderr
