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
