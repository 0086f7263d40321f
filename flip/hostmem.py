"""Host memory: back glibc malloc's large blocks with transparent huge pages.

XLA's CPU runtime allocates each step's temporaries (hundreds of MB for a ViT-B/16 step) with
malloc, which maps them fresh from the kernel and unmaps them after the step; every 4 KiB page is
then faulted in again at the next step. On the project's 2-core CPU that was a sixth of the CPU
time of a ViT-B/16 train step (13% of its wall-clock). glibc (2.35+) can ask for 2 MiB pages
instead (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`) where the kernel hands out transparent huge
pages on request (`/sys/kernel/mm/transparent_hugepage/enabled` = madvise). The tunable is only
read when a process starts, so every entry point (flip.cli.run: flip.main, flip.evaluate, the
tools) calls `reexec_with_huge_pages()` first: it restarts the same command once with the
tunable set. It must come before JAX or TensorFlow is imported (the restarted process imports
them again: 4-5 s of a 2-core machine's start-up, twice): flip.main and flip.evaluate import them
inside main, tools that import them at the top call it above those imports. FLIP_NO_HUGEPAGES=1 turns it off. On accelerators it only affects the host side.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
ENV_OFF = "FLIP_NO_HUGEPAGES"  # set (non-empty): no restart, no huge pages
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, ...] | None:
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
  except (AttributeError, ValueError, OSError):
    return None
  return tuple(int(x) for x in version.split(".")[:2]) if name == "glibc" else None


def thp_mode() -> str | None:
  """The kernel's transparent huge page mode (always / madvise / never), None if unknown."""
  try:
    with open(_THP) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def wanted() -> bool:
  """True where the tunable would change something: glibc 2.35+ and THP only on request."""
  version = _glibc_version()
  return (sys.platform.startswith("linux") and version is not None and version >= (2, 35)
          and thp_mode() == "madvise" and not os.environ.get(ENV_OFF))


def active() -> bool:
  return TUNABLE in os.environ.get("GLIBC_TUNABLES", "").split(":")


def reexec_with_huge_pages() -> None:
  """Restarts this command with glibc.malloc.hugetlb=1 where that helps; returns otherwise.

  Call it first thing in a program's entry point, before JAX or threads start.
  """
  if active() or not wanted():
    return
  env = dict(os.environ)
  env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), TUNABLE]))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)


if __name__ == "__main__":  # prints what a restarted entry point sees (tests)
  reexec_with_huge_pages()
  print(f"wanted={wanted()} active={active()} thp={thp_mode()}")
