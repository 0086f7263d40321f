"""flip.hostmem: entry points restart once with glibc's huge-page tunable where it helps."""

import os
import subprocess
import sys

from flip import hostmem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(env):
  clean = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "FLIP_NO_HUGEPAGES")}
  result = subprocess.run([sys.executable, "-m", "flip.hostmem"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**clean, **env})
  assert result.returncode == 0, result.stderr
  return result.stdout.strip()


def test_restarts_with_the_tunable_where_the_kernel_gives_huge_pages_on_request():
  out = run({})
  if hostmem.thp_mode() == "madvise" and (hostmem._glibc_version() or (0,)) >= (2, 35):
    assert out == "wanted=True active=True thp=madvise"
  else:
    assert "active=False" in out


def test_keeps_other_tunables_and_can_be_turned_off():
  out = run({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
  if hostmem.thp_mode() == "madvise":
    assert "active=True" in out  # appended to the user's tunables, not replacing them
  assert run({"FLIP_NO_HUGEPAGES": "1"}).startswith("wanted=False active=False")
