"""Eight simulated CPU devices for sharded code; TensorFlow kept off accelerators."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], "GPU")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
  """A TFDS data_dir holding the generated flip_shapes data set (built once per session).

  Set FLIP_TEST_DATA_DIR to reuse a data_dir across sessions while developing.
  """
  import tensorflow_datasets as tfds
  from flip.data import shapes  # noqa: F401  (registers the builder)
  data_dir = os.environ.get("FLIP_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))
  tfds.builder("flip_shapes", data_dir=data_dir).download_and_prepare()
  return data_dir
