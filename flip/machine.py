"""What a measurement ran on: the CPU model (as `lscpu` names it) and its matrix-math features.

Speed figures differ between CPU models (an AMD EPYC and an Intel Xeon with AMX give different
ratios for the same code), so every benchmark records the model next to its numbers.
"""

from __future__ import annotations

import os
import subprocess

# CPU flags (/proc/cpuinfo spelling) with bfloat16 or wide matrix instructions.
MATRIX_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")


def _field(text: str, name: str) -> str | None:
  """The value of `name: value` lines (lscpu's and /proc/cpuinfo's format)."""
  for line in text.splitlines():
    key, _, value = line.partition(":")
    if key.strip() == name and value.strip():
      return value.strip()
  return None


def _cpuinfo() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return f.read()
  except OSError:
    return ""


def cpu_model() -> str:
  """`lscpu`'s "Model name" (e.g. "AMD EPYC", "Intel(R) Xeon(R) Processor"), else
  /proc/cpuinfo's "model name", else "unknown"."""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True,
                         timeout=10).stdout
  except (OSError, subprocess.SubprocessError):
    out = ""
  return _field(out, "Model name") or _field(_cpuinfo(), "model name") or "unknown"


def matrix_features() -> list[str]:
  """Which of MATRIX_FLAGS this CPU reports (empty where /proc/cpuinfo is unreadable)."""
  flags = set((_field(_cpuinfo(), "flags") or "").split())
  return [f for f in MATRIX_FLAGS if f in flags]


def describe() -> dict:
  """{"cpu_model", "cpu_count", "cpu_matrix_features"}: for a benchmark's JSON."""
  return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count() or 1,
          "cpu_matrix_features": matrix_features()}
