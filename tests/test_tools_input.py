"""The README's data tool chain (export -> make_shards -> train input) and the input benchmark."""

import json
import os
import re
import subprocess

import pytest

import forkserver
from flip import config_lib
from flip import machine
from flip.data import pipeline
from flip.data import tokenizer as tokenizer_lib

pytestmark = pytest.mark.slow  # subprocess runs of the tools and the trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool(name, *args, timeout=300):
  result = subprocess.run([*forkserver.python(), os.path.join(ROOT, "tools", f"{name}.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_exported_files_become_shards_the_trainer_reads(shapes_data_dir, tmp_path):
  tool("export_shapes", f"--output_dir={tmp_path}/files", "--num=40",
       f"--data_dir={shapes_data_dir}")
  assert len(os.listdir(tmp_path / "files" / "images")) == 80  # png + txt per example
  out = tool("make_shards", f"--images_dir={tmp_path}/files/images",
             f"--output_dir={tmp_path}/shards", "--samples_per_shard=16")
  spec = re.search(r"--config\.input\.data='?([^'\s]+)", out).group(1)
  assert spec == f"wds:{tmp_path}/shards/{{00000..00002}}.tar"
  config = config_lib.base_config()
  config.input.update(data=spec, image_size=32, global_batch_size=40, shuffle_buffer=64,
                      shuffle_files=False)
  batch = next(pipeline.numpy_iterator(
      pipeline.train_dataset(config, tokenizer_lib.Tokenizer(None, 32))))
  assert len(set(batch["_key"])) == 40 and batch["_skipped"].sum() == 0
  assert (batch["_position"][:, 1] == 0).all()  # one epoch exactly: every exported example once


def test_input_benchmark_reports_images_per_second_per_core(tmp_path):
  out = tool("benchmark_input", "--num_images=64", "--batch=16", "--batches=2", "--warmup=1",
             "--image_size=64", "--threads=0,1", f"--json={tmp_path}/r.json")
  assert "per core" in out
  result = json.loads((tmp_path / "r.json").read_text())
  assert result["cpu_model"] == machine.cpu_model() and result["cores"] == os.cpu_count()
  rows = result["rows"]
  assert [r["threads"] for r in rows] == [os.cpu_count(), 1]
  assert all(r["images_per_s"] > 0 for r in rows)
  assert rows[1]["images_per_s_per_core"] == rows[1]["images_per_s"]


def test_trainer_accepts_a_vocabulary_built_by_build_vocab(shapes_data_dir, tmp_path):
  """tools/build_vocab.py on the embedded captions -> a run with that vocabulary and size."""
  import tensorflow_datasets as tfds
  from flip import train
  from flip.data import shapes  # noqa: F401
  captions = tmp_path / "captions.txt"
  ds = tfds.load("flip_shapes", split="train[:3000]", data_dir=shapes_data_dir)
  captions.write_text("\n".join(c.decode() for ex in ds.as_numpy_iterator()
                                for c in ex["captions"]) + "\n")
  out = tool("build_vocab", f"--captions={captions}", "--vocab_size=400",
             f"--output={tmp_path}/vocab.txt")
  size = int(re.search(r"--config\.model\.text\.vocab_size=(\d+)", out).group(1))
  assert size == len((tmp_path / "vocab.txt").read_text().splitlines()) < 1000
  from flip.configs import demo  # pylint: disable=g-import-not-at-top
  config = demo.get_config("local")
  config.input.data_dir = shapes_data_dir
  config.input.vocab_path = str(tmp_path / "vocab.txt")
  config.model.text.vocab_size = size
  config.total_steps = 2
  config.evals = {"zeroshot": dict(config.evals.zeroshot.to_dict(), every_steps=2)}
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["step"] == 2 and 0 <= summary["zeroshot/acc1"] <= 1
  tokens = tokenizer_lib.Tokenizer(str(tmp_path / "vocab.txt"), 32)(["a red circle"])[0]
  assert 1 not in tokens[:5]  # no [UNK] (id 1) for words of the corpus
