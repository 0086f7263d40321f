"""Symmetric InfoNCE against a NumPy reference."""

import jax
import numpy as np
import pytest

from flip import losses


def numpy_infonce(img, txt, logit_scale):
  logits = np.exp(logit_scale) * img @ txt.T

  def xent(l):
    l = l - l.max(axis=1, keepdims=True)
    logp = l - np.log(np.exp(l).sum(axis=1, keepdims=True))
    return -np.mean(np.diag(logp))

  return 0.5 * (xent(logits) + xent(logits.T))


def unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_infonce_matches_numpy():
  rng = np.random.default_rng(0)
  img, txt = unit(rng.normal(size=(16, 8))), unit(rng.normal(size=(16, 8)))
  for scale in (0.0, np.log(1 / 0.07), np.log(100)):
    got = losses.infonce(img.astype(np.float32), txt.astype(np.float32), np.float32(scale))
    np.testing.assert_allclose(got, numpy_infonce(img, txt, scale), rtol=1e-5)


def test_infonce_is_asymmetric_in_general_but_symmetrised():
  rng = np.random.default_rng(1)
  img, txt = unit(rng.normal(size=(8, 4))), unit(rng.normal(size=(8, 4)))
  # Swapping the towers leaves the symmetric loss unchanged.
  np.testing.assert_allclose(losses.infonce(img, txt, 2.0), losses.infonce(txt, img, 2.0),
                             rtol=1e-6)


def test_infonce_over_sharded_global_batch():
  """Batch split over 8 devices: still the loss over the whole global batch."""
  rng = np.random.default_rng(2)
  img, txt = unit(rng.normal(size=(32, 8))), unit(rng.normal(size=(32, 8)))
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  got = jax.jit(losses.infonce)(jax.device_put(img.astype(np.float32), sharded),
                                jax.device_put(txt.astype(np.float32), sharded), 1.5)
  np.testing.assert_allclose(got, numpy_infonce(img, txt, 1.5), rtol=1e-5)


def test_perfect_alignment_has_low_loss():
  eye = np.eye(8, dtype=np.float32)
  assert losses.infonce(eye, eye, np.log(100)) < 1e-3


def mesh_of(shape):
  from flip import sharding  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  return sharding.make_mesh(ml_collections.ConfigDict(shape))


@pytest.mark.parametrize("shape", [dict(data=8), dict(fsdp=8), dict(data=4, model=2),
                                   dict(data=2, fsdp=2, model=2)], ids=str)
def test_sharded_infonce_equals_global_loss_and_gradients(shape):
  """Blockwise logits on 8 devices: the single-device global loss and its gradients."""
  rng = np.random.default_rng(3)
  img = unit(rng.normal(size=(32, 8))).astype(np.float32)
  txt = unit(rng.normal(size=(32, 8))).astype(np.float32)
  scale = np.float32(2.3)
  mesh = mesh_of(shape)
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  fn = jax.jit(jax.value_and_grad(
      lambda a, b, s: losses.sharded_infonce(a, b, s, mesh), argnums=(0, 1, 2)))
  loss, grads = fn(jax.device_put(img, sharded), jax.device_put(txt, sharded), scale)
  want_loss, want_grads = jax.value_and_grad(losses.infonce, argnums=(0, 1, 2))(img, txt, scale)
  np.testing.assert_allclose(loss, numpy_infonce(img, txt, scale), rtol=1e-5)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  for got, want in zip(grads, want_grads):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)
