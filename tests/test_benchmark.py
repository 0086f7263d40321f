"""tools/benchmark.py runs the real train step and reports masking speedups."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_reports_each_mask_ratio(tmp_path):
  out = tmp_path / "bench.json"
  result = subprocess.run(
      [sys.executable, "tools/benchmark.py", "--config=configs/vitb16_mask50.py:local",
       "--mask=0,0.75", "--steps=2", "--warmup=1", "--batch=16", f"--json={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads(out.read_text())["rows"]
  assert [r["mask_ratio"] for r in rows] == [0.0, 0.75]
  assert all(r["step_s"] > 0 and r["images_per_s"] > 0 for r in rows)
  assert rows[0]["speedup"] == 1.0 and rows[0]["flops_ratio"] == 1.0
  # A quarter of the patches: the image tower's FLOPs drop by more than half.
  assert rows[1]["flops_ratio"] < 0.75
  assert "speedup" in result.stdout


def plan(tmp_path, *args):
  out = tmp_path / "plan.json"
  result = subprocess.run(
      [sys.executable, "tools/plan_memory.py", *args, f"--json={out}"],
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
