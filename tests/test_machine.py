"""flip.machine: the CPU model and matrix features that benchmarks record."""

import subprocess

from flip import machine

LSCPU = """Architecture:             x86_64
CPU(s):                   2
Vendor ID:                GenuineIntel
Model name:               Intel(R) Xeon(R) Processor
Flags:                    fpu vme avx512f amx_bf16
"""


def test_model_name_from_lscpu(monkeypatch):
  monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, LSCPU))
  assert machine.cpu_model() == "Intel(R) Xeon(R) Processor"


def test_falls_back_to_cpuinfo_then_unknown(monkeypatch):
  def no_lscpu(*args, **kwargs):
    raise FileNotFoundError("lscpu")
  monkeypatch.setattr(subprocess, "run", no_lscpu)
  monkeypatch.setattr(machine, "_cpuinfo",
                      lambda: "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx512f "
                              "avx512_bf16\n")
  assert machine.cpu_model() == "AMD EPYC 7B13"
  assert machine.matrix_features() == ["avx512f", "avx512_bf16"]
  monkeypatch.setattr(machine, "_cpuinfo", lambda: "")
  assert machine.cpu_model() == "unknown" and machine.matrix_features() == []


def test_this_machine_is_described():
  described = machine.describe()
  assert described["cpu_model"] and described["cpu_count"] >= 1
  assert set(described["cpu_matrix_features"]) <= set(machine.MATRIX_FLAGS)
