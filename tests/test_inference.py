"""flip.inference: loading (workdir and export), encoders against direct model calls, zero-shot
probabilities against a NumPy formula, search, export round trip, bad input; and the Colab
notebook executed end to end."""

import os
import pathlib
import subprocess

import jax
import numpy as np
import pytest
from PIL import Image

import forkserver
from flip import checkpoint
from flip import inference
from flip import train_step
from flip import sharding
from flip.data import pipeline
from flip.data import shapes
from flip.configs import demo
from flip.models import flip as flip_lib
from conftest import jit_apply

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A workdir as training leaves it: the :local demo model's state at step 5 + config.json."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = demo.get_config("local")
  mesh = sharding.make_mesh(config.mesh)
  _, init_fn, _, _ = train_step.build(config, mesh)
  state = init_fn(jax.random.key(7))
  ckpt = checkpoint.Checkpointer(workdir, 1, 2)
  ckpt.save(5, state.replace(step=state.step + 5), force=True)
  ckpt.close()
  checkpoint.write_config(config, workdir)
  return workdir, config, jax.tree.map(np.asarray, state.params)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  folder = tmp_path_factory.mktemp("images")
  paths = []
  for i in range(5):
    path = folder / f"scene_{i}.png"
    Image.fromarray(shapes.render_example("validation", i)["image"]).save(path)
    paths.append(str(path))
  return paths


@pytest.fixture(scope="module")
def model(run_dir):
  return inference.FLIPModel.load(run_dir[0], batch_size=4)


def test_encoders_match_the_model_and_the_eval_transform(model, run_dir, images):
  _, config, params = run_dir
  net = flip_lib.from_config(config.model)
  import tensorflow as tf
  pixels = np.stack([pipeline.normalize(pipeline.center_crop(
      tf.cast(pipeline.decode(tf.io.read_file(p)), tf.float32), 32)).numpy() for p in images])
  want = jit_apply(net, {"params": params}, pixels, method=flip_lib.FLIP.encode_image)
  got = model.encode_images(images)  # 5 images in batches of 4: one padded batch
  assert got.shape == (5, config.model.embed_dim)
  np.testing.assert_allclose(got, want, atol=1e-5)
  arrays = [np.asarray(Image.open(p)) for p in images]
  np.testing.assert_allclose(model.encode_images(arrays), got, atol=1e-6)  # arrays
  np.testing.assert_allclose(model.encode_images([Image.open(p) for p in images]), got, atol=1e-6)
  texts = ["a red circle", "a small blue square on stripes"]
  want_t = jit_apply(net, {"params": params}, model.tokenizer(texts),
                     method=flip_lib.FLIP.encode_text)
  np.testing.assert_allclose(model.encode_texts(texts), want_t, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_zero_shot_probabilities_match_a_numpy_formula(model, images):
  names, templates = ["red circle", "blue square", "green star"], ["a {}.", "a photo of a {}."]
  probs = model.zero_shot_classify(images, names, templates)
  text = model.encode_texts([t.format(n) for n in names for t in templates]).reshape(3, 2, -1)
  classes = text.mean(axis=1)
  classes /= np.linalg.norm(classes, axis=1, keepdims=True)
  logits = model.logit_scale * model.encode_images(images) @ classes.T
  want = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  np.testing.assert_allclose(probs, want, rtol=1e-4, atol=1e-6)
  assert model.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)  # the untrained temperature


def test_search_ranks_by_similarity(model, images):
  emb = model.encode_images(images)
  # An image query (a path given as pathlib.Path: a str is a text query) finds itself first.
  indices, scores = model.search(pathlib.Path(images[3]), emb, k=3)
  assert indices[0] == 3 and scores[0] == pytest.approx(1.0, abs=1e-5)
  indices, scores = model.search("a red circle", emb, k=10)
  want = emb @ model.encode_texts(["a red circle"])[0]
  assert list(indices) == list(np.argsort(-want, kind="stable")) and len(indices) == 5
  np.testing.assert_allclose(scores, want[indices], rtol=1e-6)


@pytest.mark.slow
def test_export_round_trip_gives_identical_embeddings(model, run_dir, images, tmp_path):
  path = str(tmp_path / "demo.flip")
  result = subprocess.run([*forkserver.python(), "tools/export.py", f"--workdir={run_dir[0]}",
                           f"--out={path}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  exported = inference.FLIPModel.load(path, batch_size=4)
  np.testing.assert_array_equal(exported.encode_images(images), model.encode_images(images))
  np.testing.assert_array_equal(exported.encode_texts(["a red circle"]),
                                model.encode_texts(["a red circle"]))
  # Loading the export needs no checkpointing or optimizer code at all.
  code = ("import sys; sys.modules['orbax'] = sys.modules['optax'] = None\n"
          "from flip import inference\n"
          f"m = inference.FLIPModel.load({path!r})\n"
          "print(m.encode_texts(['a red circle']).shape)")
  result = subprocess.run([*forkserver.python(), "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0 and "(1, 32)" in result.stdout, result.stderr[-3000:]


def test_bad_input_names_the_input(model, run_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing_here.*neither a FLIP training workdir"):
    inference.FLIPModel.load(str(tmp_path / "nothing_here"))
  empty_run = tmp_path / "empty_run"
  empty_run.mkdir()
  (empty_run / "config.json").write_text(open(os.path.join(run_dir[0], "config.json")).read())
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    inference.FLIPModel.load(str(empty_run))
  not_zip = tmp_path / "model.flip"
  not_zip.write_bytes(b"not a zip file")
  with pytest.raises(ValueError, match="model.flip is not a FLIP model export"):
    inference.FLIPModel.load(str(not_zip))
  broken = tmp_path / "broken.jpg"
  broken.write_bytes(b"<html>not an image</html>")
  with pytest.raises(ValueError, match=r"Cannot read image .*broken.jpg.* \(input 0\)"):
    model.encode_images([str(broken)])
  with pytest.raises(ValueError, match="Cannot read image .*missing.png"):
    model.encode_images([str(tmp_path / "missing.png")])
  with pytest.raises(ValueError, match=r"Image 1 has shape \(4, 4, 5\)"):
    model.encode_images([np.zeros((8, 8, 3)), np.zeros((4, 4, 5))])
  with pytest.raises(ValueError, match="class_names must be a non-empty list"):
    model.zero_shot_classify([np.zeros((8, 8, 3))], [])
  with pytest.raises(ValueError, match="no images"):
    model.encode_images([])
  with pytest.raises(ValueError, match="no texts"):
    model.encode_texts([])


@pytest.mark.slow
@pytest.mark.parametrize("source", ["workdir", "hub_folder_and_photos"])
def test_notebook_runs_end_to_end(run_dir, tmp_path, monkeypatch, source):
  """notebooks/flip_inference.ipynb, executed in a fresh kernel with no network: a training
  workdir on the scenes it draws, or a model-hub export on a folder of the user's photographs.
  (A .flip export loads through the same FLIPModel.load, checked by
  test_export_round_trip_gives_identical_embeddings; each kernel costs ~14 s of CPU.)"""
  import nbclient
  import nbformat
  model_path = run_dir[0]
  monkeypatch.delenv("FLIP_IMAGE_DIR", raising=False)
  if source == "hub_folder_and_photos":
    from flip.formats import hub
    model_path = hub.write_hub(*inference.workdir_config_and_params(run_dir[0]),
                               str(tmp_path / "hub"))
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):  # stand-ins for photographs: smooth colour fields, JPEG, odd sizes
      h, w = 120 + 17 * i, 160 - 9 * i
      field = np.cumsum(rng.normal(size=(h, w, 3)), axis=0).cumsum(axis=1)
      field = (255 * (field - field.min()) / np.ptp(field)).astype(np.uint8)
      Image.fromarray(field).save(photos / f"photo_{i}.jpg", quality=90)
    monkeypatch.setenv("FLIP_IMAGE_DIR", str(photos))
  monkeypatch.setenv("FLIP_MODEL", model_path)
  monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend: figures as PNG
  monkeypatch.setenv("PYTHONPATH", ROOT)
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "flip_inference.ipynb"), as_version=4)
  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  text = "".join(o.get("text", "") for o in outputs)
  images = "5 images in" if source == "hub_folder_and_photos" else "12 images in"
  assert f"Loaded {model_path}" in text and images in text
  assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4  # the four figures
