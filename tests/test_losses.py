"""Symmetric InfoNCE against a NumPy reference."""

import jax
import numpy as np

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
