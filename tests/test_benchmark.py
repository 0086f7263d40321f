"""tools/benchmark.py runs the real train step and reports masking speedups."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

import forkserver
from conftest import local_open_clip_shape
from conftest import xla_flags
from flip import flops
from flip import hostmem
from flip import machine

pytestmark = pytest.mark.slow  # subprocess runs of tools/benchmark.py and tools/plan_memory.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_tool(name: str):
  """Imports tools/{name}.py (tools/ holds scripts, not a package)."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


open_clip_peer = _load_tool("open_clip_peer")


def benchmark(tmp_path, *args, env=None, torch=None):
  """tools/benchmark.py on the :local recipe. A run that loads torch (the open_clip peer; say
  torch=False for one refused before it is loaded) in a new Python: torch's triton crashes
  beside the fork server's libraries (tests/forkserver.py)."""
  out = tmp_path / "bench.json"
  torch = "--peer=open_clip" in args if torch is None else torch
  python = [sys.executable] if torch else forkserver.python()
  result = subprocess.run(
      [*python, "tools/benchmark.py", "--config=configs/vitb16_mask50.py:local",
       "--steps=2", "--warmup=1", "--batch=16", f"--json={out}", *args],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=None if env is None else {**os.environ, **env})
  return result, (json.loads(out.read_text()) if out.exists() else None)


def test_benchmark_reports_each_mask_ratio_with_mfu(tmp_path):
  result, table = benchmark(tmp_path, "--mask=0,0.75")
  assert result.returncode == 0, result.stderr[-3000:]
  rows = table["rows"]
  assert [r["mask_ratio"] for r in rows] == [0.0, 0.75]
  assert all(r["step_s"] > 0 and r["images_per_s"] > 0 for r in rows)
  assert rows[0]["speedup"] == 1.0 and rows[0]["flops_ratio"] == 1.0
  # A quarter of the patches: the image tower's FLOPs drop by more than half.
  assert rows[1]["flops_ratio"] < 0.75
  peak = table["measured_peak"]["flops_per_s"]
  assert peak > 0 and table["datasheet_peak"] is None  # a CPU has no datasheet entry
  assert table["cpu_model"] == machine.cpu_model() and table["cpu_count"] == os.cpu_count()
  for r in rows:
    # MFU: the analytic model FLOP/s per device over the matmul peak measured in the same run.
    assert r["mfu"] == pytest.approx(
        r["model_flops_per_step"] / r["step_s"] / table["device_count"] / peak)
    # The :local recipe rematerialises both towers: XLA counts the recomputation too.
    assert 1.1 < r["xla_over_model_flops"] < 2.0
  # With them where they were wanted (the tests turn them off: tests/conftest.py).
  assert table["huge_pages"] == (hostmem.active() or hostmem.wanted())
  assert "MFU" in result.stdout and "speedup" in result.stdout


@pytest.mark.skipif(not open_clip_peer.installed(), reason="pip install -r requirements-peer.txt")
def test_benchmark_times_open_clip_beside_ours(tmp_path):
  """open_clip's ViT-B-16 resized to the :local recipe's towers (--peer_resized) at the same
  (small) image size, batch and mask ratio."""
  result, table = benchmark(tmp_path, "--mask=0.5", "--peer=open_clip", "--peer_resized",
                            "--batch=8", "--steps=1", "--warmup=0",
                            "--config.input.image_size=64",
                            env={"XLA_FLAGS": xla_flags()})  # one device
  assert result.returncode == 0, result.stderr[-3000:]
  peer = table["peer"]
  assert peer["model"] == "ViT-B-16-resized"
  assert [r["mask_ratio"] for r in peer["rows"]] == [0.5]
  assert all(r["batch"] == 8 and r["step_s"] > 0 for r in peer["rows"])
  assert peer["rows"][0]["params"] < 3e6  # ViT-B-16 itself: 150M
  # The :local towers (configs/common.py: shrink_for_cpu) at 64 px with open_clip's class token:
  # 256 patches of 4 px, of which patch dropout keeps 128, as flip.flops counts them.
  shape = local_open_clip_shape(64)
  assert peer["rows"][0]["model_flops_per_step"] == flops.step_flops(shape, 0.5, 8)
  assert flops.step_flops(shape, 0.5, 8) < 0.75 * flops.step_flops(shape, 0.0, 8)
  for ours, theirs in zip(table["rows"], peer["rows"], strict=True):
    assert ours["over_peer"] == pytest.approx(ours["images_per_s"] / theirs["images_per_s"])
  assert "ours / open_clip" in result.stdout
  # Ours on 8 (simulated) devices against one torch process would not be a comparison.
  result, _ = benchmark(tmp_path, "--mask=0", "--peer=open_clip", torch=False)
  assert result.returncode != 0 and "one device" in result.stderr


def test_benchmark_peer_missing_says_how_to_install(tmp_path):
  fake = tmp_path / "fake"
  fake.mkdir()
  (fake / "open_clip.py").write_text("raise ImportError('no open_clip here')\n")
  result, _ = benchmark(tmp_path, "--mask=0", "--peer=open_clip",
                        env={"PYTHONPATH": f"{fake}{os.pathsep}{ROOT}", "XLA_FLAGS": ""})
  assert result.returncode != 0
  assert "requirements-peer.txt" in result.stderr + result.stdout


def plan(tmp_path, *args):
  out = tmp_path / "plan.json"
  result = subprocess.run(
      [*forkserver.python(), "tools/plan_memory.py", *args, f"--json={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  return result, (json.loads(out.read_text()) if out.exists() else None)


def test_plan_memory_compiles_for_a_target_mesh(tmp_path):
  """The planner compiles the real step for 16 simulated devices (not this host's count)."""
  result, table = plan(tmp_path, "--config=configs/demo.py", "--devices=16", "--hbm_gib=0.25",
                       "--mesh=data=2,fsdp=-1", "--remat=none,full", "--batch=4096")
  assert result.returncode == 0, result.stderr[-3000:]
  assert table["mesh"] == {"data": 2, "fsdp": 8, "model": 1}
  none, full = table["rows"]
  assert none["remat"] == "none" and full["remat"] == "full"
  assert full["temporaries"] < none["temporaries"]  # recomputed, not kept
  # Adam's two moments are sharded like the parameters (+ replicated step counts).
  assert full["params"] == none["params"] > 0
  assert 0 <= full["opt_state"] - 2 * full["params"] <= 64  # + optax step counts
  for row in table["rows"]:
    assert row["fits"] == (row["peak"] <= 0.25 * 2**30)
    assert row["peak"] == (row["arguments"] + row["outputs"] - row["aliased"] +
                           row["temporaries"] + row["code"])
  assert "fits" in result.stdout


def test_plan_memory_bad_input(tmp_path):
  result, _ = plan(tmp_path, "--config=configs/demo.py", "--devices=16", "--mesh=data=3")
  assert result.returncode != 0 and "needs 3 devices but there are 16" in result.stderr
  result, _ = plan(tmp_path, "--config=configs/demo.py", "--target=v4-256", "--devices=8")
  assert result.returncode != 0 and "either --target or --devices" in result.stderr
  result, _ = plan(tmp_path, "--config=configs/demo.py", "--devices=8", "--mesh=fsdp:8")
  assert result.returncode != 0 and "axis=size" in result.stderr
