"""A non-editable install (a wheel) works from another directory: recipes by name, console scripts.
"""

import glob
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import xla_flags

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
  env = dict(os.environ, PYTHONPATH=str(target), TFDS_DATA_DIR=shapes_data_dir,
             XLA_FLAGS=xla_flags())  # one device

  def run(*args):
    return subprocess.run(list(args), cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=600)

  # Where `import flip` finds the package (its modules not run: a Python's imports cost ~7 s).
  where = run(sys.executable, "-c", "import importlib.util as u; "
              "print(u.find_spec('flip').origin, u.find_spec('flip.configs.common').origin)")
  paths = where.stdout.split()  # the installed copy, not the checkout
  assert len(paths) == 2 and all(p.startswith(str(target)) for p in paths), where
  assert os.path.exists(target / "flip" / "data" / "vocab_bert_base_uncased.txt")

  workdir = tmp_path / "run"
  train = run(sys.executable, "-m", "flip.main", "--config=vitl16_mask50:local",
              f"--workdir={workdir}", "--config.total_steps=2", "--config.log_every_steps=1",
              "--config.evals.zeroshot.every_steps=2")
  assert train.returncode == 0, train.stderr[-3000:]
  assert (workdir / "config.json").exists() and (workdir / "checkpoints" / "2").exists()

  evaluate = run(str(target / "bin" / "flip-evaluate"), f"--workdir={workdir}")
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  assert "zeroshot/acc1:" in evaluate.stdout

  # The flip-train script: a mistyped recipe name is one line listing the recipes.
  typo = run(str(target / "bin" / "flip-train"), "--config=vitl16_mask5", f"--workdir={workdir}")
  assert typo.returncode == 2 and "vitl16_mask50" in typo.stderr


OPTIONAL = {"torch": "reads open_clip .bin/.pt files (flip/formats/open_clip.py says how)"}
DISTRIBUTION = {"absl": "absl-py", "PIL": "pillow", "orbax": "orbax-checkpoint",
                "tensorflow_datasets": "tensorflow-datasets", "tensorflow_text": "tensorflow-text"}


def test_install_requires_lists_what_the_package_imports():
  """Every third-party module that flip/ imports is in setup.py's install_requires (torch, an
  optional reader, excepted)."""
  import ast
  import re
  imported = set()
  for path in pathlib.Path(ROOT, "flip").rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        imported |= {a.name.split(".")[0] for a in node.names}
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        imported.add(node.module.split(".")[0])
  third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "flip"}
  setup = pathlib.Path(ROOT, "setup.py").read_text()
  listed = {re.split(r"[<>=\[ ]", r)[0].lower().replace("_", "-")
            for r in re.findall(r'^\s+"([A-Za-z][^"]*)",', setup, re.M)}
  missing = {m for m in third_party - set(OPTIONAL)
             if DISTRIBUTION.get(m, m).lower().replace("_", "-") not in listed}
  assert not missing, f"imported by flip/ but not in install_requires: {sorted(missing)}"
