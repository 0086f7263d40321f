"""Keeps the image libraries' raw stderr lines off the console of the entry points.

libjpeg and libpng, inside TensorFlow's decoders, print a line to the process's stderr for every
broken image they meet ("Corrupt JPEG data: ...", "Improper call to JPEG library in state 200",
"libpng warning: ..."). The input pipeline already drops, counts and logs each such record once
(flip/data/pipeline.py), and a web-scale data set has thousands of them; TensorFlow adds a
warning line of its own for each. So `install()` routes
file descriptor 2 through a small forked process that drops those lines and passes every other
byte on unchanged. Being a separate process (`python -m flip.stderr_filter`), it also passes on
what a crashing process writes last (an abort message, a fatal error). FLIP_RAW_STDERR=1 turns it
off.
"""

from __future__ import annotations

import atexit
import os
import re
import select
import signal
import subprocess
import sys

NOISE = re.compile(
    rb"^(Corrupt JPEG data|Premature end of JPEG|Improper call to JPEG library|"
    rb"Invalid JPEG file structure|Not a JPEG file|Unsupported marker type|Bogus marker length|"
    rb"Bogus Huffman table|Huffman table 0x|Quantization table 0x|JPEG datastream contains no "
    rb"image|Warning: unknown JFIF revision|Unsupported JPEG (data precision|colorspace|process)|"
    rb"Invalid (SOS parameters|component ID|progressive parameters|color quantization mode)|"
    rb"Inconsistent progression sequence|Empty JPEG image|Premature end of input file|"
    rb"Maximum supported image dimension|Image too wide for this implementation|"
    rb"Too many color components|Sorry, arithmetic coding|Unknown Adobe color transform|"
    rb"libpng (warning|error):|"
    # TensorFlow's own warning for each image that failed to decode (the pipeline logs the record)
    rb"[WE]\d{4} [^\]]*local_rendezvous\.cc:\d+\] Local rendezvous is aborting with status: "
    rb"INVALID_ARGUMENT: (jpeg::Uncompress failed|Invalid JPEG data|Invalid PNG data|"
    rb"Unknown image file format|Input is empty|Error in decoding))")
ENV_OFF = "FLIP_RAW_STDERR"


def is_noise(line: bytes) -> bool:
  return NOISE.match(line) is not None


def forward(read_fd: int, write_fd: int, idle_flush_s: float = 0.2) -> None:
  """Copies read_fd to write_fd until EOF, dropping whole lines that are image-library noise.

  A partial line is passed on after `idle_flush_s` without more input (progress output).
  """
  pending = b""
  while True:
    ready, _, _ = select.select([read_fd], [], [], idle_flush_s if pending else None)
    if not ready:  # idle with a partial line: pass it on
      os.write(write_fd, pending)
      pending = b""
      continue
    chunk = os.read(read_fd, 1 << 16)
    if not chunk:
      break
    *lines, pending = (pending + chunk).split(b"\n")
    out = b"".join(line + b"\n" for line in lines if not is_noise(line))
    if out:
      os.write(write_fd, out)
  if pending and not is_noise(pending):
    os.write(write_fd, pending)


_child: subprocess.Popen | None = None


def install() -> None:
  """Routes fd 2 through the filter (once per process; a no-op with FLIP_RAW_STDERR=1)."""
  global _child
  if _child is not None or os.environ.get(ENV_OFF, "") not in ("", "0"):
    return
  sys.stderr.flush()
  read_fd, write_fd = os.pipe()
  # Its own session: a Ctrl-C or a SIGTERM to the run's process group does not stop it, so the
  # run's last lines (how it stopped) still reach the console; it ends at the pipe's EOF.
  _child = subprocess.Popen([sys.executable, "-m", "flip.stderr_filter"], stdin=read_fd,
                            stdout=sys.__stderr__.fileno(), close_fds=True,
                            start_new_session=True)
  os.close(read_fd)
  os.dup2(write_fd, 2)
  os.close(write_fd)
  atexit.register(drain)


def drain(timeout_s: float = 5.0) -> None:
  """At exit: closes this process's end of the pipe and waits (a little) for the filter to pass
  everything on, so the last lines come before the shell's prompt (a no-op without a filter)."""
  if _child is None:
    return
  try:
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    _child.wait(timeout_s)
  except (OSError, ValueError, subprocess.TimeoutExpired):
    pass


if __name__ == "__main__":
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  forward(0, 1)
