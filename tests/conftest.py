"""Eight simulated CPU devices for sharded code; TensorFlow kept off accelerators.

The suite compiles the same small programs many times (every training test builds the same tiny
model, often in a subprocess), so one session shares one persistent XLA compilation cache, new
for each session: a session still compiles every program once, and no stale cache outlives it.
"""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # inherited by the tests' subprocesses
  _cache = tempfile.mkdtemp(prefix="flip-tests-xla-cache-")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"

import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], "GPU")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
  """A TFDS data_dir holding the generated flip_shapes data set (built once per session, also
  when pytest-xdist runs the tests in several processes: they share one build under a lock).

  Set FLIP_TEST_DATA_DIR to reuse a data_dir across sessions while developing.
  """
  import fcntl
  import tensorflow_datasets as tfds
  from flip.data import shapes  # noqa: F401  (registers the builder)
  data_dir = os.environ.get("FLIP_TEST_DATA_DIR")
  if not data_dir:
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
      shared = shared.parent  # the session's directory, above each worker's own
    data_dir = str(shared / "tfds_flip_shapes")
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, ".lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # one process builds; the others wait, then reuse it
    tfds.builder("flip_shapes", data_dir=data_dir).download_and_prepare()
  return data_dir


def pytest_collection_modifyitems(config, items):
  """The files with the most slow tests first (each file's tests together and in order, so that
  module fixtures are built once): under pytest -n 2 the long runs start early and the short
  tests fill the gaps at the end, instead of one long test running alone there."""
  del config
  slow = {}
  for item in items:
    slow[item.path] = slow.get(item.path, 0) + bool(item.get_closest_marker("slow"))
  items.sort(key=lambda item: -slow[item.path])  # stable: the files' own order within each
