"""Eight simulated CPU devices for sharded code; TensorFlow kept off accelerators.

The suite compiles the same small programs many times (every training test builds the same tiny
model, often in a subprocess), so one session shares one persistent XLA compilation cache, new
for each session: a session still compiles every program once, and no stale cache outlives it.
"""

import atexit
import importlib
import json
import os
import shutil
import signal
import tempfile

# The tests' programs are tiny and compiled often: XLA's CPU backend at LLVM's -O2 instead of
# its default -O3 compiles them ~15% faster and runs them as fast (-O0: ~40% faster to compile,
# up to 2.7x slower to run). The HLO passes, fusion and sharding are unchanged. Inherited by the
# tests' subprocesses.
_flags = os.environ.get("XLA_FLAGS", "").split()  # once: pytest-xdist's workers inherit them
os.environ["XLA_FLAGS"] = " ".join(_flags + [
    f for f in ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=2")
    if f not in _flags])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # inherited by the tests' subprocesses
  _cache = tempfile.mkdtemp(prefix="flip-tests-xla-cache-")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"

# The entry points restart themselves once with glibc huge pages (flip/hostmem.py); the test
# processes and their subprocesses run without them (inherited; no restart either). Their
# programs are small and many, most of them forked from a server, and huge pages cost them more
# than they save: the fast tier took 2 min 12 s (252 s of CPU, 19 of them in the kernel) against
# 2 min 36 s (297, 34) with them (AMD EPYC, 2 cores, -n 2, runs 20 minutes apart), and a process
# of two warm :local runs spent 4.2-4.9 s in the kernel against 9.0-10.0. tests/test_hostmem.py
# runs its programs without the setting; test_cli.py's restart tests stub flip.hostmem.
from flip import hostmem  # noqa: E402

os.environ.setdefault(hostmem.ENV_OFF, "1")

import pytest  # noqa: E402

# A suite started in the background by a non-interactive shell (or by nohup) inherits SIGINT
# ignored, and so would the programs the tests start: the tests of signal handling need Python's
# own handler.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
  signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionstart(session):
  """TensorFlow off the accelerators and the flip_shapes builder registered, before the test
  modules are imported; not in pytest-xdist's controller, which runs no tests (importing
  TensorFlow there would delay the workers' start by seconds)."""
  if session.config.pluginmanager.has_plugin("dsession"):
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  importlib.import_module("flip.data.shapes")  # registers the flip_shapes builder


def xla_flags(devices: int | None = None) -> str:
  """XLA_FLAGS for a test's subprocess: this session's compile flags, with `devices` simulated
  CPU devices (None: XLA's default, one)."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  if devices is not None:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  return " ".join(flags)


def jit_apply(module, variables, *args, **kwargs):
  """`module.apply(variables, *args, **kwargs)` compiled as one program. A Flax model applied
  eagerly runs op by op, each operation compiled on its own: 2-3x the CPU of one jit for the
  tests' tiny models. The array arguments and the rngs are traced; the other arguments (mask
  ratios, method=, flags) are fixed in the program."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  traced = {i: a for i, a in enumerate(args) if isinstance(a, (jax.Array, np.ndarray))}
  rngs = kwargs.pop("rngs", None)

  def run(variables, traced, rngs):
    return module.apply(variables, *(traced.get(i, a) for i, a in enumerate(args)), rngs=rngs,
                        **kwargs)

  return jax.jit(run)(variables, traced, rngs)


def local_open_clip_shape(image_size: int):
  """flip.flops' shape of open_clip's model resized to the :local towers (configs/common.py:
  shrink_for_cpu; tools/open_clip_peer.py --sizes): a class token, every patch embedded."""
  from flip import flops  # pylint: disable=g-import-not-at-top
  return flops.ClipShape(image_size=image_size, patch_size=4, image_width=64, image_depth=2,
                         image_mlp_dim=256, text_len=32, text_width=64, text_depth=1,
                         text_mlp_dim=256, embed_dim=32, class_token=True,
                         embed_after_masking=False)


def session_dir(tmp_path_factory):
  """This session's temporary directory, one for all pytest-xdist worker processes."""
  shared = tmp_path_factory.getbasetemp()
  return shared.parent if os.environ.get("PYTEST_XDIST_WORKER") else shared


# The tests' flip_shapes: its first TRAIN_EXAMPLES training examples (of 20,000) and the whole
# validation and test splits (1,000 each). No test needs more training images than that (the
# demo-learning test's 40 steps of 256 go round them twice), and generating the other 15,000 would
# cost ~25 s of CPU before the first test that needs the data set can start. A session without
# slow tests (the fast tier) cuts the training split to FAST_TRAIN_EXAMPLES: ~17 s of CPU less.
TRAIN_EXAMPLES = 5000
FAST_TRAIN_EXAMPLES = 1000
_slow_tests_selected = True  # set by pytest_collection_finish


def pytest_collection_finish(session):
  global _slow_tests_selected
  _slow_tests_selected = any(item.get_closest_marker("slow") for item in session.items)


def train_examples() -> int:
  """This session's cut of the training split: TRAIN_EXAMPLES, or FAST_TRAIN_EXAMPLES in a
  session of fast tests only."""
  return TRAIN_EXAMPLES if _slow_tests_selected else FAST_TRAIN_EXAMPLES


def split_sizes() -> dict[str, int]:
  """The tests' flip_shapes split sizes: the data set's, cut to train_examples()."""
  from flip.data import shapes  # pylint: disable=g-import-not-at-top
  return {split: min(n, train_examples()) for split, n in shapes.SPLIT_SIZES.items()}


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
  """A TFDS data_dir holding the generated flip_shapes data set, cut to split_sizes() (built once
  per session, also when pytest-xdist runs the tests in several processes: they share one build
  under a lock).

  Set FLIP_TEST_DATA_DIR to reuse a data_dir across sessions while developing.
  """
  import fcntl
  import tensorflow_datasets as tfds
  data_dir = os.environ.get("FLIP_TEST_DATA_DIR") or str(
      session_dir(tmp_path_factory) / f"tfds_flip_shapes_{train_examples()}")
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, ".lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # one process builds; the others wait, then reuse it
    builder = tfds.builder("flip_shapes", data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        try_download_gcs=False, max_examples_per_split=train_examples()))
  sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert sizes == split_sizes(), (f"{data_dir} holds another build of flip_shapes ({sizes}): "
                                "remove it, or set FLIP_TEST_DATA_DIR to another directory")
  return data_dir


def built_once(tmp_path_factory, name, build) -> str:
  """The directory `name`, filled by `build(directory)` once per session, also across
  pytest-xdist workers (the first builds under a lock; the others wait, then reuse it).
  Tests only read it: one that writes into a run copies it first."""
  import fcntl
  directory = session_dir(tmp_path_factory) / name
  with open(f"{directory}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (directory / ".built").exists():
      shutil.rmtree(directory, ignore_errors=True)
      directory.mkdir()
      build(str(directory))
      (directory / ".built").write_text("")
  return str(directory)


def local_demo_config(data_dir, **overrides):
  """configs/demo.py:local reading `data_dir`, with {"dotted.key": value} overrides."""
  from flip.configs import demo
  c = demo.get_config("local")
  c.input.data_dir = data_dir  # the evaluators read their data sets from it too
  for key, value in overrides.items():
    target = c
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return c


def _trained(data_dir, **overrides):
  def build(workdir):
    from flip import train
    summary = train.train_and_evaluate(local_demo_config(data_dir, **overrides), workdir)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f)
  return build


def _read_run(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return workdir, json.load(f)


# The :local demo's evaluators run every 10 steps; the shared run evaluates once, at its end,
# on half the :local sets (each evaluation of the run, its rerun and flip.evaluate's, ~2 s less).
LOCAL_RUN = {**{f"evals.{name}.every_steps": 20 for name in ("zeroshot", "retrieval",
                                                             "linear_probe")},
             "evals.zeroshot.max_examples": 250, "evals.retrieval.max_examples": 250,
             "evals.linear_probe.max_train_examples": 500,
             "evals.linear_probe.max_test_examples": 250}


@pytest.fixture(scope="session")
def local_run(shapes_data_dir, tmp_path_factory):
  """(workdir, summary) of the :local demo as flip.main runs it (LOCAL_RUN: evaluated once):
  20 steps, checkpointed at steps 10 and 20, evaluated (zero-shot, retrieval, linear probe) at
  step 20. Shared by the tests of the training loop and of the evaluation entry points."""
  return _read_run(built_once(tmp_path_factory, "local_run",
                              _trained(shapes_data_dir, **LOCAL_RUN)))


def small_evals(flag: str = "config", examples: int = 100) -> list[str]:
  """Command-line flags that shrink the :local demo's evaluations (flag `--FLAG.evals...`) to
  `examples` images each (the linear probe: as many to train on), for tests that check that
  they run, not what they measure: seconds less per evaluation."""
  return [f"--{flag}.evals.{option}={examples}" for option in (
      "zeroshot.max_examples", "retrieval.max_examples", "linear_probe.max_train_examples",
      "linear_probe.max_test_examples")]


# The files whose slow tests take the longest wall-clock, mostly waiting (processes in gloo's
# collectives, runs timed against a budget): 1-2 minutes each, which at the end of a run would
# leave the other workers idle.
LONG_FIRST = ("test_multihost.py", "test_tools_tuning.py")


def pytest_collection_modifyitems(config, items):
  """LONG_FIRST, then the files with the most slow tests (each file's tests together and in
  order, so that module fixtures are built once): under pytest-xdist the long runs start early
  and the short tests fill the gaps at the end, instead of one long test running alone there."""
  del config
  slow = {}
  for item in items:
    slow[item.path] = slow.get(item.path, 0) + bool(item.get_closest_marker("slow"))
  # Stable: the files' own order within each.
  items.sort(key=lambda item: (item.path.name not in LONG_FIRST, -slow[item.path]))
