"""open_clip / OpenAI CLIP ViT weights in and out, exact against open_clip itself.

open_clip builds each model with random weights (tests/open_clip_worker.py, in its own process);
after import, this codebase's embeddings, logit scale and zero-shot probabilities must equal
open_clip's on the same images and captions within 1e-5 relative (float32); exported weights
load back into open_clip with equal embeddings. The named models run with SHALLOW blocks per
tower (their widths, heads, patch and image sizes, vocabulary and activation as released): every
block maps the same way, and the full-depth configs equal open_clip's own files.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import forkserver
from conftest import built_once
from flip import config_lib
from flip import errors
from flip.data import bpe
from flip.formats import open_clip as oc
from flip.formats import safetensors
from flip.formats import hub
from flip.models import flip as flip_lib

pytestmark = pytest.mark.skipif(importlib.util.find_spec("open_clip") is None,
                                reason="open_clip is a test dependency (requirements-peer.txt)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTIONS = ["a photo of a cat.", "Two DOGS playing on the beach!!", "Zürich: café, naïve façade",
            "東京の夜景と富士山", "a red 🚗 next to a 🌳", "", "it's what they've done — 100% "
            "sure & <3", "a very long caption " + "that keeps going " * 30]
TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32,
                       "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                     "layers": 1}}
TINY_PATCH4 = dict(TINY, vision_cfg=dict(TINY["vision_cfg"], patch_size=4))
SHALLOW = 2  # blocks per tower of the named models in the exactness tests
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def worker(*commands):
  """tests/open_clip_worker.py's commands (each a list of its arguments) in turn, in one new
  Python (torch's triton crashes beside the fork server's libraries: tests/forkserver.py; and
  importing torch costs seconds of CPU)."""
  jobs = json.dumps([list(map(str, c)) for c in commands])
  result = subprocess.run([sys.executable, "tests/open_clip_worker.py", "jobs", jobs],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]


def inputs_path(directory, size):
  return directory / f"inputs_{size}.npz"


def inputs_for(directory, size):
  rng = np.random.default_rng(size)
  images = rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8)
  path = inputs_path(directory, size)
  np.savez(path, images=images, texts=np.array(CAPTIONS))
  return path, images


def make(out, name, torch_file=False, layers=None):
  """The worker's command that makes open_clip `name` with random weights (`layers` blocks per
  tower if given) in `out`: the weights as model.safetensors and, with torch_file, model.bin,
  and the reference outputs (read_made reads them)."""
  inputs, _ = inputs_for(out, oc.model_config(name)["vision_cfg"]["image_size"])
  return ["make", name, out, inputs, *(["--bin"] if torch_file else []),
          *([f"--layers={layers}"] if layers else [])]


def read_made(out, name):
  """(the files' directory, reference outputs, images, inputs file) of a made model."""
  inputs = inputs_path(out, oc.model_config(name)["vision_cfg"]["image_size"])
  return out, dict(np.load(out / "ref.npz")), np.load(inputs)["images"], inputs


def shallow(cfg, layers):
  """An open_clip model config with `layers` blocks in each tower."""
  return dict(cfg, vision_cfg=dict(cfg["vision_cfg"], layers=layers),
              text_cfg=dict(cfg["text_cfg"], layers=layers))


def open_clip_config_file(name):
  """open_clip's own model config file `name`.json (found without importing open_clip and
  torch), or None if open_clip has none of that name."""
  package = importlib.util.find_spec("open_clip").submodule_search_locations[0]
  path = os.path.join(package, "model_configs", f"{name}.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def ours(config, params, images, texts):
  """(image embeddings, text embeddings, logit scale, token ids) of this codebase's model."""
  config = config_lib.resolve(config)
  model = flip_lib.from_config(config.model)
  params = hub.check_params(config, params)
  pixels = (images.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD  # the pipeline's
  tokens = bpe.BpeTokenizer(None, config.input.text_len)(texts)
  image, text, scale = jax.jit(model.apply)({"params": params}, pixels, tokens)
  return np.asarray(image), np.asarray(text), float(np.exp(scale)), tokens


def assert_close(got, want, what, rtol=1e-5):
  err = np.linalg.norm(got - want, axis=-1) / np.linalg.norm(want, axis=-1)
  assert err.max() <= rtol, f"{what}: relative error {err.max():.2e}"


def zero_shot(image, text, scale):
  logits = scale * image @ text.T
  e = np.exp(logits - logits.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def check_equal(name, ref, image, text, scale, tokens):
  np.testing.assert_array_equal(tokens, ref["tokens"])
  assert_close(image, ref["image"], f"{name} image embeddings")
  assert_close(text, ref["text"], f"{name} text embeddings")
  assert abs(scale - float(ref["logit_scale"])) <= 1e-5 * scale
  np.testing.assert_allclose(zero_shot(image, text, scale),
                             zero_shot(ref["image"], ref["text"], float(ref["logit_scale"])),
                             rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A tiny open_clip ViT CLIP (a JSON model config of its own) with random weights, made once
  per session (the tests only read its directory)."""
  def build(directory):
    path = pathlib.Path(directory) / "tiny_clip.json"
    path.write_text(json.dumps(TINY))
    worker(make(pathlib.Path(directory), str(path), torch_file=True))

  path = pathlib.Path(built_once(tmp_path_factory, "open_clip_tiny", build)) / "tiny_clip.json"
  return path, read_made(path.parent, str(path))


NAMED = ("ViT-B-32", "ViT-B-32-quickgelu", "ViT-B-16", "ViT-L-14")


@pytest.fixture(scope="session")
def named(tmp_path_factory):
  """{name: directory} of the NAMED models with SHALLOW blocks and random weights, made once per
  session by one open_clip process (the tests only read the directories)."""
  def build(directory):
    outs = [pathlib.Path(directory) / name for name in NAMED]
    for out in outs:
      out.mkdir()
    worker(*(make(out, name, layers=SHALLOW) for out, name in zip(outs, NAMED)))

  root = pathlib.Path(built_once(tmp_path_factory, "open_clip_named", build))
  return {name: root / name for name in NAMED}


@pytest.mark.parametrize("name", ["tiny", *(pytest.param(n, marks=pytest.mark.slow)
                                            for n in NAMED)])
def test_imported_model_equals_open_clip(request, name):
  if name == "tiny":
    path, (out, ref, images, _) = request.getfixturevalue("tiny")
    name = str(path)
    cfg = oc.model_config(name)
  else:  # SHALLOW blocks: test_listed_models_are_open_clips_own_configs checks the full ones
    out, ref, images, _ = read_made(request.getfixturevalue("named")[name], name)
    cfg = shallow(oc.model_config(name), SHALLOW)
  config = oc.apply(config_lib.base_config(), cfg)
  params = oc.to_params(oc.read_state_dict(str(out / "model.safetensors")), cfg, name)
  check_equal(name, ref, *ours(config, params, images, CAPTIONS))
  if (out / "model.bin").exists():  # the torch.save file holds the same tensors
    from_bin = oc.read_state_dict(str(out / "model.bin"))
    from_st = oc.read_state_dict(str(out / "model.safetensors"))
    assert sorted(from_bin) == sorted(from_st)
    for key, value in from_st.items():
      np.testing.assert_array_equal(from_bin[key], value, err_msg=key)


def run_tool(*args):
  return subprocess.run([*forkserver.python(), *map(str, args)], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)


@pytest.mark.slow
def test_import_tool_writes_a_workdir_that_inference_and_export_read(tiny, tmp_path):
  """The tools end to end on a (tiny) open_clip model of a JSON config of its own: import of the
  torch.save file, FLIPModel on the workdir, export to open_clip (loaded back by open_clip by
  model name and as local-dir) and to a model-hub folder (loaded back by FLIPModel)."""
  path, (out, ref, images, inputs) = tiny
  workdir = tmp_path / "imported"
  result = run_tool("tools/import_weights.py", "--format=open_clip", f"--model={path}",
                    f"--checkpoint={out / 'model.bin'}", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "flip.evaluate" in result.stdout
  from flip import inference
  model = inference.FLIPModel.load(str(workdir), batch_size=4)
  assert model.config.input.tokenizer == "bpe" and model.config.model.image.pool == "cls"
  assert list(model.config.evals) == ["imagenet"]  # the import's evaluation: ImageNet zero-shot
  image, text = model.encode_images(list(images)), model.encode_texts(CAPTIONS)
  check_equal("the workdir", ref, image, text, model.logit_scale,
              model.tokenizer(CAPTIONS))

  # Export to open_clip: a folder create_model_and_transforms reads, by name or as local-dir.
  exported = tmp_path / "exported"
  result = run_tool("tools/export.py", "--format=open_clip", f"--workdir={workdir}",
                    f"--out={exported}")
  assert result.returncode == 0, result.stderr[-3000:]
  cfg = json.loads((exported / "open_clip_config.json").read_text())
  assert oc.expected_shapes(cfg["model_cfg"]) == oc.expected_shapes(oc.model_config(str(path)))
  assert cfg["preprocess_cfg"]["mean"] == list(oc.OPENAI_MEAN)
  back, _ = safetensors.read(str(exported / "open_clip_model.safetensors"))
  original, _ = safetensors.read(str(out / "model.safetensors"))
  assert sorted(back) == sorted(original)
  for key, value in original.items():  # an imported model round-trips bit-exactly
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  ways = ((path, exported / "open_clip_model.safetensors"), (f"local-dir:{exported}", "-"))
  worker(*(["load", model_name, weights, inputs, tmp_path / f"loaded_{i}.npz"]
           for i, (model_name, weights) in enumerate(ways)))
  for i, (model_name, _) in enumerate(ways):
    loaded = dict(np.load(tmp_path / f"loaded_{i}.npz"))
    check_equal(f"exported, loaded as {model_name}", loaded, image, text, model.logit_scale,
                model.tokenizer(CAPTIONS))

  # Export as a model-hub folder: safetensors + config + tokenizer files, read by FLIPModel.
  hub = tmp_path / "hub"
  result = run_tool("tools/export.py", "--format=safetensors", f"--workdir={workdir}",
                    f"--out={hub}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert {"model.safetensors", "config.json", "bpe_simple_vocab_16e6.txt.gz"} <= set(
      os.listdir(hub))
  again = inference.FLIPModel.load(str(hub), batch_size=4)
  np.testing.assert_array_equal(again.encode_texts(CAPTIONS), text)
  np.testing.assert_array_equal(again.encode_images(list(images)), image)


@pytest.mark.slow
def test_masked_fine_tuning_of_an_imported_model(shapes_data_dir, tiny, tmp_path):
  """The one-line recipe: open_clip_mask50 from an imported (tiny) open_clip model, 50% of the
  patches dropped, CLIP's BPE captions from the tf.data pipeline."""
  tiny, (out, ref, _, _) = tiny
  cfg = oc.model_config(str(tiny))
  config = oc.apply(config_lib.base_config(), cfg)
  params = oc.to_params(oc.read_state_dict(str(out / "model.safetensors")), cfg, "tiny")
  from flip.formats import workdir as workdir_lib
  imported = workdir_lib.write(config, params, str(tmp_path / "imported"))

  # flip.evaluate's evaluation of the imported workdir (its config, evaluators on flip_shapes).
  from flip import checkpoint, evaluation
  evals = checkpoint.read_config(imported).to_dict()
  evals["input"]["data_dir"] = shapes_data_dir
  evals["evals"] = {"zeroshot": dict(type="zeroshot", every_steps=1, dataset="flip_shapes",
                                     split="validation", max_examples=64)}
  results = evaluation.evaluate_checkpoint(config_lib.resolve(evals), imported)
  assert results["step"] == 0 and 0.0 <= results["zeroshot/acc1"] <= 1.0

  from flip import train
  from flip.configs import open_clip_mask50
  ft = open_clip_mask50.get_config(str(tiny))
  assert ft.mask_ratio == 0.5 and ft.model.image.class_token
  ft.init_from = imported
  ft.input.update(data="tfds:flip_shapes", data_dir=shapes_data_dir, global_batch_size=8,
                  shuffle_buffer=64)
  ft.optim.warmup_steps = 1
  ft.total_steps = ft.checkpoint_every_steps = 3
  ft.log_every_steps = 1
  ft.evals = {}
  summary = train.train_and_evaluate(ft, str(tmp_path / "ft"))
  assert summary["step"] == 3 and np.isfinite(summary["train/loss"])
  from flip import inference
  tuned = inference.FLIPModel.load(str(tmp_path / "ft"), batch_size=4)
  before = inference.FLIPModel.load(imported, batch_size=4)
  assert_close(before.encode_texts(CAPTIONS), ref["text"], "the imported tiny model")
  assert not np.allclose(tuned.encode_texts(CAPTIONS), before.encode_texts(CAPTIONS))


def test_own_architecture_export_names_what_open_clip_cannot_express():
  from flip.configs import demo
  config = config_lib.resolve(demo.get_config())
  with pytest.raises(errors.ConfigError) as e:
    oc.config_of(config)
  message = str(e.value)
  for part in ("model.image.class_token=False", "model.text.pool='mean'",
               "input.tokenizer='wordpiece'", "--format=safetensors"):
    assert part in message, message


def test_listed_models_are_open_clips_own_configs():
  """Every named model is open_clip's model config file of that name (a `-quickgelu` name that
  open_clip has no file for: its base model with quick_gelu)."""
  for name, cfg in oc.MODEL_CONFIGS.items():
    theirs = open_clip_config_file(name)
    if theirs is None:
      assert name.endswith("-quickgelu"), name
      theirs = dict(open_clip_config_file(name[:-len("-quickgelu")]), quick_gelu=True)
    assert cfg == theirs, name


def test_every_listed_model_maps_onto_a_valid_config():
  for name, cfg in oc.MODEL_CONFIGS.items():
    config = config_lib.resolve(oc.apply(config_lib.base_config(), cfg))
    back = oc.config_of(config)  # what an export writes: the same model
    assert oc.expected_shapes(back) == oc.expected_shapes(cfg), name
    assert back.get("quick_gelu", False) == cfg.get("quick_gelu", False), name
    v = cfg["vision_cfg"]
    want = oc.expected_shapes(cfg)
    assert want["visual.positional_embedding"] == ((v["image_size"] // v["patch_size"]) ** 2 + 1,
                                                   v["width"])


# --- bad input ------------------------------------------------------------------------------

def test_bad_files_and_names_fail_clearly(tiny, tmp_path):
  path, (out, _, _, _) = tiny
  cfg = oc.model_config(str(path))
  with pytest.raises(errors.ConfigError, match="Unknown open_clip model 'ViT-X-99'"):
    oc.model_config("ViT-X-99")
  text_file = tmp_path / "notes.bin"
  text_file.write_text("not weights")
  with pytest.raises(errors.DataError, match="neither a safetensors file nor a PyTorch"):
    oc.read_state_dict(str(text_file))
  with pytest.raises(errors.NotFoundError, match="not found"):
    oc.read_state_dict(str(tmp_path / "missing.safetensors"))
  blob = (out / "model.safetensors").read_bytes()
  truncated = tmp_path / "cut.safetensors"
  truncated.write_bytes(blob[: len(blob) // 2])
  with pytest.raises(errors.DataError, match="truncated"):
    oc.read_state_dict(str(truncated))
  cut_bin = tmp_path / "cut.bin"
  cut_bin.write_bytes((out / "model.bin").read_bytes()[:100_000])
  with pytest.raises(errors.DataError, match="could not be read as a PyTorch checkpoint"):
    oc.read_state_dict(str(cut_bin))
  garbage = tmp_path / "garbage.safetensors"
  garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
  with pytest.raises(errors.DataError, match="not a safetensors file"):
    oc.read_state_dict(str(garbage))
  # The file of a model with 8 px patches given as one with 4 px patches: the parameters and
  # both shapes are named.
  state = oc.read_state_dict(str(out / "model.safetensors"))
  with pytest.raises(errors.CheckpointMismatchError,
                     match=r"visual.positional_embedding has shape \(17, 64\) but open_clip "
                           r"other has \(65, 64\); visual.conv1.weight has shape "
                           r"\(64, 3, 8, 8\) but open_clip other has \(64, 3, 4, 4\)"):
    oc.to_params(state, TINY_PATCH4, "other")
  # Given as ViT-B-32 (12 text blocks, not 1): the missing names are listed.
  with pytest.raises(errors.CheckpointMismatchError,
                     match=r"not an open_clip ViT-B-32 state dict: missing \['transformer"
                           r".resblocks.1.attn.in_proj_bias'.*\(252 in all\)"):
    oc.to_params(state, oc.model_config("ViT-B-32"), "ViT-B-32")
  partial = dict(state)
  del partial["visual.ln_pre.weight"]
  partial["visual.extra"] = np.zeros(3, np.float32)
  with pytest.raises(errors.CheckpointMismatchError,
                     match=r"missing \['visual.ln_pre.weight'\].*unknown \['visual.extra'\]"):
    oc.to_params(partial, cfg, "tiny")
  with pytest.raises(errors.ConfigError, match="text_cfg.hf_model_name"):
    oc.apply(config_lib.base_config(), dict(cfg, text_cfg=dict(cfg["text_cfg"],
                                                               hf_model_name="roberta-base")))
  with pytest.raises(errors.ConfigError, match="vision_cfg.pool_type='avg'"):
    oc.apply(config_lib.base_config(), dict(cfg, vision_cfg=dict(cfg["vision_cfg"],
                                                                 pool_type="avg")))


def test_import_tool_bad_input_is_one_line(tiny, tmp_path):
  _, (out, _, _, _) = tiny
  result = run_tool("tools/import_weights.py", "--format=open_clip", "--model=ViT-B-32",
                    f"--checkpoint={out / 'model.safetensors'}", f"--workdir={tmp_path / 'w'}")
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: The checkpoint is not an open_clip ViT-B-32 state dict"), last
  assert "Traceback" not in result.stderr and not (tmp_path / "w").exists()
  result = run_tool("tools/import_weights.py", "--format=open_clip",
                    f"--checkpoint={out / 'model.safetensors'}", f"--workdir={tmp_path / 'w'}")
  assert result.returncode == 1 and "needs --model" in result.stderr.strip().splitlines()[-1]


def test_safetensors_round_trip(tmp_path):
  import ml_dtypes
  tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array(3, np.int64),
             "c": np.array([1.5, -2.0], ml_dtypes.bfloat16)}
  safetensors.write(str(tmp_path / "x.safetensors"), tensors, {"format": "pt"})
  got, meta = safetensors.read(str(tmp_path / "x.safetensors"))
  assert meta == {"format": "pt"}
  np.testing.assert_array_equal(got["a"], tensors["a"])
  assert got["b"] == 3 and got["b"].dtype == np.int64
  np.testing.assert_array_equal(got["c"], np.array([1.5, -2.0], np.float32))
