"""A non-editable install (a wheel) works from another directory: recipes by name, console scripts.
"""

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_wheel_installs_and_runs_from_elsewhere(shapes_data_dir, tmp_path):
  wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
  elsewhere.mkdir()
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
  # The venv's setuptools builds it (no download); --no-deps: the dependencies are installed.
  subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), ROOT],
                 check=True, capture_output=True, timeout=300)
  wheel, = glob.glob(str(wheels / "flip-*.whl"))
  subprocess.run(pip + ["install", "--no-deps", "--target", str(target), wheel], check=True,
                 capture_output=True, timeout=300)
  env = dict(os.environ, PYTHONPATH=str(target), TFDS_DATA_DIR=shapes_data_dir)
  env.pop("XLA_FLAGS", None)

  def run(*args):
    return subprocess.run(list(args), cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=600)

  where = run(sys.executable, "-c", "import flip, flip.configs.common; print(flip.__file__)")
  assert where.stdout.strip().startswith(str(target)), where  # not the checkout
  assert os.path.exists(target / "flip" / "data" / "vocab_bert_base_uncased.txt")

  workdir = tmp_path / "run"
  train = run(sys.executable, "-m", "flip.main", "--config=vitl16_mask50:local",
              f"--workdir={workdir}", "--config.total_steps=2", "--config.log_every_steps=1",
              "--config.evals.zeroshot.every_steps=2")
  assert train.returncode == 0, train.stderr[-3000:]
  assert (workdir / "config.json").exists() and (workdir / "checkpoints" / "2").exists()

  evaluate = run(str(target / "bin" / "flip-evaluate"), f"--workdir={workdir}")
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  assert "zeroshot/top1:" in evaluate.stdout

  # The flip-train script: a mistyped recipe name is one line listing the recipes.
  typo = run(str(target / "bin" / "flip-train"), "--config=vitl16_mask5", f"--workdir={workdir}")
  assert typo.returncode == 2 and "vitl16_mask50" in typo.stderr
