"""AdamW against a NumPy reference; the weight-decay mask; the warmup + cosine schedule."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flip import config_lib
from flip import optim
from flip.models import flip as flip_lib


def small_config(**overrides):
  c = config_lib.base_config()
  c.input.global_batch_size = 512
  c.optim.base_lr = 1e-3
  c.optim.warmup_steps = 10
  c.total_steps = 110
  for k, v in overrides.items():
    c[k] = v
  return c


def test_lr_is_base_times_batch_over_256_with_warmup_then_cosine():
  c = small_config()
  sched = optim.schedule(c)
  peak = 1e-3 * 512 / 256
  assert optim.peak_lr(c) == peak
  assert sched(0) == 0.0
  np.testing.assert_allclose(sched(5), peak / 2, rtol=1e-6)
  np.testing.assert_allclose(sched(10), peak, rtol=1e-6)
  np.testing.assert_allclose(sched(60), peak * 0.5 * (1 + math.cos(math.pi * 0.5)), rtol=1e-5)
  np.testing.assert_allclose(sched(110), 0.0, atol=1e-12)


def test_lengths_in_samples_convert_with_the_batch():
  c = config_lib.load_recipe("vitl16_mask50")
  assert config_lib.steps_from(c, "total", 65536) == math.ceil(12.8e9 / 65536)
  assert config_lib.steps_from(c.optim, "warmup", 65536) == math.ceil(51.2e6 / 65536)
  np.testing.assert_allclose(optim.peak_lr(c), 1.024e-3)
  c.total_steps = 7  # *_steps wins over *_samples
  assert config_lib.steps_from(c, "total", 65536) == 7


def test_decay_mask_on_real_model():
  c = config_lib.base_config()
  c.model.image.update(patch_size=4, depth=1, width=32, num_heads=2)
  c.model.text.update(depth=1, width=32, num_heads=2, vocab_size=50)
  c.model.embed_dim = 8
  model = flip_lib.from_config(c.model)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 3)),
                                        jnp.zeros((1, 32), jnp.int32))["params"])
  flat = {optim.path_str(p): m for p, m in
          jax.tree_util.tree_flatten_with_path(optim.decay_mask(params))[0]}
  decayed = {k for k, m in flat.items() if m}
  assert "text/token_embed/embedding" in decayed
  assert "image_proj/kernel" in decayed and "image/patch_embed/kernel" in decayed
  assert "image/encoder/blocks/mlp/fc1/kernel" in decayed  # scanned: stacked blocks
  for name, m in flat.items():
    if name.endswith(("bias", "scale")) or "pos_embed" in name or name == "logit_scale":
      assert not m, name
    else:
      assert name.endswith(("kernel", "embedding")) and m, name


def test_adamw_matches_numpy_reference():
  c = small_config()
  c.optim.update(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.2)
  tx = optim.make(c)
  sched = optim.schedule(c)
  params = {"dense": {"kernel": jnp.array([1.0, -2.0]), "bias": jnp.array([0.5])}}
  grads = [{"dense": {"kernel": jnp.array([0.1, 0.3]), "bias": jnp.array([-0.2])}},
           {"dense": {"kernel": jnp.array([-0.4, 0.2]), "bias": jnp.array([0.7])}}]
  state = tx.init(params)
  p = params
  for g in grads:
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)

  ref = {k: np.asarray(v, np.float64) for k, v in params["dense"].items()}
  m = {k: 0.0 for k in ref}
  v = {k: 0.0 for k in ref}
  for t, g in enumerate(grads, start=1):
    lr = float(sched(t - 1))
    for k in ref:
      gk = np.asarray(g["dense"][k], np.float64)
      m[k] = 0.9 * m[k] + 0.1 * gk
      v[k] = 0.95 * v[k] + 0.05 * gk ** 2
      step = (m[k] / (1 - 0.9 ** t)) / (np.sqrt(v[k] / (1 - 0.95 ** t)) + 1e-8)
      if k == "kernel":
        step = step + 0.2 * ref[k]
      ref[k] = ref[k] - lr * step
  for k in ref:
    np.testing.assert_allclose(p["dense"][k], ref[k], rtol=1e-5)


def test_schedule_equals_optax_warmup_cosine_compiled():
  """The schedule from runtime numbers (optim.schedule_args) gives optax's
  warmup_cosine_decay_schedule, both compiled (bit for bit on the CPU with the pinned jaxlib;
  asserted to float32 round-off, which another XLA may fold differently)."""
  steps = jnp.arange(0, 130, dtype=jnp.int32)
  for warmup, total in ((0, 50), (10, 110), (19, 75), (1, 4), (200, 120)):
    c = small_config(total_steps=total)
    c.optim.warmup_steps = warmup
    w = min(warmup, total)
    ref = optax.warmup_cosine_decay_schedule(0.0, optim.peak_lr(c), w, max(total, w + 1),
                                             end_value=0.0)
    want = jax.jit(jax.vmap(ref))(steps)
    got = jax.jit(lambda s, args: jax.vmap(optim.warmup_cosine(args))(s))(
        steps, optim.schedule_args(c))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12, err_msg=f"{warmup}, {total}")


def tiny_train_config():
  """A base config with one-layer towers of width 16 on 8x8 images, batch 8."""
  c = config_lib.base_config()
  c.input.update(global_batch_size=8, image_size=8)
  c.model.image.update(patch_size=4, depth=1, width=16, num_heads=2)
  c.model.text.update(depth=1, width=16, num_heads=2, vocab_size=50)
  c.model.embed_dim = 8
  return c


def test_runs_of_other_lengths_share_one_compiled_step():
  """The schedule's numbers are an argument of the train step, not constants in it: the
  program (and so its persistent-cache entry) is the same for any run length and warmup."""
  from flip import sharding
  from flip import train_step
  texts = []
  for total, warmup in ((10, 2), (2200, 500)):
    c = tiny_train_config()
    c.total_steps, c.optim.warmup_steps = total, warmup
    mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
    _, _, abstract, step_fn = train_step.build(c, mesh)
    texts.append(step_fn.lower(abstract, *train_step.abstract_inputs(c, mesh)).as_text())
  assert texts[0] == texts[1]


def test_init_is_traced_once_and_placed_as_its_abstract_state(monkeypatch):
  """train_step.init_state traces the model's init once (the abstract state and the jitted init
  share the trace) and the state it makes has the abstract state's shapes and shardings."""
  from flip import sharding
  from flip import train_step
  traced = []
  init_params = flip_lib.init_params
  monkeypatch.setattr(flip_lib, "init_params", lambda *a: traced.append(1) or init_params(*a))
  c = tiny_train_config()
  c.mesh = {"fsdp": 2}
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:2])
  _, init_fn, abstract, _ = train_step.build(c, mesh)
  state = init_fn(jax.random.key(0))
  assert len(traced) == 1
  want, got = jax.tree.leaves(abstract), jax.tree.leaves(state)
  assert len(want) == len(got) > 10
  assert [(x.shape, x.dtype, x.sharding) for x in want] == [
      (x.shape, x.dtype, x.sharding) for x in got]
  assert any(not x.sharding.is_fully_replicated for x in got)  # fsdp shards some parameters
