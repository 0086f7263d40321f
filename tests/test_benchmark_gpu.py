"""tools/benchmark_gpu.py (ours and open_clip, B/16 and L/16, on one GPU) and the batch that
fits (tools/benchmark.py --batch=auto): the arithmetic here, the tools end to end on the CPU."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

import forkserver
from conftest import local_open_clip_shape
from flip import flops
from flip import memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "benchmark_gpu", os.path.join(ROOT, "tools", "benchmark_gpu.py"))
benchmark_gpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark_gpu)


def test_fit_batch_fills_the_memory_in_multiples():
  gib = memory.GIB
  # 10 GiB fixed, 0.25 GiB a sample, 80 GiB: (0.85 * 80 - 10) / 0.25 = 232 -> 232.
  assert memory.fit_batch(10 * gib, gib / 4, 80 * gib) == 232
  assert memory.fit_batch(10 * gib, gib / 4, 80 * gib, multiple=32) == 224
  assert memory.fit_batch(0, 1, 1e12) == 4096  # capped
  assert memory.fit_batch(70 * gib, gib, 80 * gib) == 0  # the state alone fills 85%
  assert memory.fit_batch(10 * gib, 0, 80 * gib) == 4096


def _ours(mask_rows, backend="gpu"):
  return {"backend": backend, "rows": [
      dict(mask_ratio=m, batch=256, images_per_s=ips, mfu=0.3, mfu_datasheet=mfu)
      for m, ips, mfu in mask_rows]}


def _peer(mask_rows):
  return {"rows": [dict(mask_ratio=m, batch=b, images_per_s=ips, mfu_datasheet=0.2)
                   for m, b, ips in mask_rows]}


def test_summary_ratios_and_goals():
  b16 = benchmark_gpu.summarize("B/16", _ours([(0.0, 2000, 0.4), (0.5, 3900, 0.38)]),
                                _peer([(0.0, 256, 1500), (0.5, 128, 2000)]))
  assert [r["over_peer"] for r in b16] == [2000 / 1500, 3900 / 2000]
  assert b16[1]["peer_batch"] == 128 and b16[0]["mfu_basis"] == "datasheet"
  l16 = benchmark_gpu.summarize("L/16", _ours([(0.0, 700, 0.46)]), _peer([(0.0, 256, 500)]))
  met = benchmark_gpu.goals(b16 + l16)
  assert list(met.values()) == [True, True]
  low = benchmark_gpu.summarize("L/16", _ours([(0.0, 600, 0.44)]), _peer([(0.0, 256, 500)]))
  assert list(benchmark_gpu.goals(b16 + low).values()) == [False, False]  # 1.2x; MFU 44%
  # No open_clip, no datasheet (a CPU): nothing measured for either goal.
  cpu = benchmark_gpu.summarize("L/16", _ours([(0.0, 10, None)], "cpu"), None)
  assert cpu[0]["mfu"] == 0.3 and cpu[0]["mfu_basis"] == "measured"
  assert list(benchmark_gpu.goals(cpu).values()) == [None, None]
  table = benchmark_gpu.markdown(b16)
  assert "| B/16 | 50% | 256 (128) | 3,900 | 38.0% | 2,000 | 20.0% | 1.95x |" in table


@pytest.mark.slow
def test_gpu_benchmark_runs_end_to_end_on_a_cpu(tmp_path):
  """The driver as on a GPU, with the :local recipes (tiny towers) on this CPU: both tools run
  in their own processes, ours at the largest batch that fits --memory_gib (--batch=auto, the
  driver's default), open_clip's ViT-B-16 with the shrunk recipe's tower sizes at that batch;
  the merged JSON has every row, and no goal is claimed. In float32: bfloat16 is slow on a CPU
  without bfloat16 instructions."""
  out = tmp_path / "gpu.json"
  result = subprocess.run(
      [*forkserver.python(), "tools/benchmark_gpu.py", "--models=B/16", "--recipe_arg=local",
       "--batch=auto", "--memory_gib=0.15", "--steps=1", "--warmup=0", "--mask=0",
       "--dtype=float32", f"--json={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  table = json.loads(out.read_text())
  assert table["cpu_model"] and table["goals"] == {} and table["dtype"] == "float32"
  assert [r["mask_ratio"] for r in table["rows"]] == [0.0]
  for r in table["rows"]:
    assert r["images_per_s"] > 0 and r["peer_images_per_s"] > 0 and r["over_peer"] > 0
  ours, peer = table["models"]["B/16"]["ours"], table["models"]["B/16"]["peer"]
  assert ours["dtype"] == "float32" and ours["remat"] == ["none", "none"]
  # --batch=auto: the largest per-device batch whose compiled step (mask 0) fits the memory;
  # the timed compile's peak stays within it.
  fitted = ours["auto_batch"]
  assert fitted["per_device_batch"] % 8 == 0 and fitted["per_device_batch"] > fitted["probe_batch"]
  assert ours["batch"] == fitted["per_device_batch"] * ours["device_count"]
  assert ours["rows"][0]["peak_bytes"] <= 0.15 * memory.GIB
  assert not peer["rows"][0]["bfloat16"] and peer["rows"][0]["batch"] == ours["batch"]
  assert "no goal is checked" in result.stdout
  # open_clip's model has the :local towers (configs/common.py: shrink_for_cpu), as flip.flops
  # counts them with open_clip's class token, and a tiny parameter count (ViT-B-16: 150M).
  assert peer["model"] == "ViT-B-16-resized"
  assert peer["rows"][0]["model_flops_per_step"] == flops.step_flops(
      local_open_clip_shape(32), 0.0, ours["batch"])
  assert peer["rows"][0]["params"] < 3e6


@pytest.mark.slow
def test_peer_sizes_with_an_unknown_field_fail_clearly(tmp_path):
  sizes = tmp_path / "sizes.json"
  sizes.write_text(json.dumps({"embed_dim": 32, "vision": {"layers": 2}}))
  result = subprocess.run(
      [sys.executable, "tools/open_clip_peer.py", f"--sizes={sizes}", "--steps=1"], cwd=ROOT,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert result.stderr.splitlines()[-1] == (
      "error: --sizes: unknown field(s) ['vision']; it sets embed_dim, vision_cfg and text_cfg "
      "entries.")


@pytest.mark.slow
def test_auto_batch_on_a_cpu_needs_the_memory(tmp_path):
  """A CPU reports no memory limit: --batch=auto needs --memory_gib there (the batch it fits is
  checked by test_gpu_benchmark_runs_end_to_end_on_a_cpu)."""
  bad = subprocess.run(
      [*forkserver.python(), "tools/benchmark.py", "--config=configs/vitb16_mask50.py:local",
       "--batch=auto", "--mask=0", "--steps=1"], cwd=ROOT, capture_output=True, text=True,
      timeout=600)
  assert bad.returncode == 1 and "give --memory_gib" in bad.stderr.splitlines()[-1]
