"""Scale-out: the whole train step on 8 simulated devices equals one device; remat, mixed
precision, per-device memory and the sharding checks that run before any compile."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from flip import config_lib
from flip import memory
from flip import optim
from flip import sharding
from flip import train_step
from flip.models import flip as flip_lib
from conftest import jit_apply


def small_config(mesh=None, **model):
  c = config_lib.base_config()
  c.model.image.update(patch_size=4, depth=2, width=32, num_heads=2)
  c.model.text.update(depth=2, width=32, num_heads=2, vocab_size=64, max_len=8)
  c.model.embed_dim = 16
  c.model.update(model)
  c.input.update(data="tfds:unused", image_size=16, text_len=8, global_batch_size=16)
  # eps 1e-4: the attention key bias has an exactly zero gradient (softmax ignores a constant
  # per query), so Adam would turn its float noise (~1e-9, differing between meshes) into
  # full-size updates; a larger eps keeps noise as noise without touching real gradients.
  c.optim.update(base_lr=2e-2, warmup_steps=1, eps=1e-4)
  c.total_steps = 10
  c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "model": 1, **(mesh or {})})
  return c


def host_batch(c, step):
  rng = np.random.default_rng(step)
  b, s = c.input.global_batch_size, c.input.image_size
  text = rng.integers(1, c.model.text.vocab_size, (b, c.input.text_len)).astype(np.int32)
  text[:, 5:] = np.where(rng.random((b, 3)) < 0.5, 0, text[:, 5:])  # some padding
  return {"image": rng.standard_normal((b, s, s, 3)).astype(np.float32), "text": text}


def run(c, devices, steps=3, mask_ratio=0.5):
  """Trains `steps` steps; returns (losses, grad norms, params as numpy, final state)."""
  mesh = sharding.make_mesh(c.mesh, devices)
  _, init_fn, _, step_fn = train_step.build(c, mesh, mask_ratio)
  state = init_fn(jax.random.key(0))
  losses, norms, lr_args = [], [], optim.schedule_args(c)
  for i in range(steps):
    state, metrics = step_fn(state, sharding.global_batch(host_batch(c, i), mesh), lr_args)
    losses.append(float(metrics["loss"]))
    norms.append(float(metrics["grad_norm"]))
  return np.array(losses), np.array(norms), jax.tree.map(np.asarray, state.params), state


@pytest.fixture(scope="module")
def one_device():
  return run(small_config(), jax.devices()[:1])


# Compiled training steps (~10 s of CPU each): the mesh of every axis at once (data, fsdp and
# model parallelism together, the hardest case) is in the fast tier; pure FSDP over all eight
# devices (the pods' usual mesh: every kernel row split 8 ways), remat, mixed precision and the
# memory report in the slow one. Pure data parallelism and data x model add nothing that the
# mesh of every axis does not check (the memory report compiles data=8 too).
SLOW = pytest.mark.slow
MESHES = [pytest.param(dict(fsdp=8), marks=SLOW), dict(data=2, fsdp=2, model=2)]


@pytest.mark.parametrize("mesh", MESHES, ids=str)
def test_sharded_step_equals_one_device(mesh, one_device):
  """Three steps of the whole train step (masking, both towers, sharded loss, AdamW)."""
  losses, norms, params, state = run(small_config(mesh), jax.devices()[:8])
  want_losses, want_norms, want_params, _ = one_device
  np.testing.assert_allclose(losses, want_losses, rtol=2e-5)
  np.testing.assert_allclose(norms, want_norms, rtol=2e-4)
  assert losses[-1] < losses[0]  # the steps did train
  jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5),
               params, want_params)
  # The state lives where the rules put it: kernels split over fsdp (rows) and model (heads /
  # hidden units); AdamW's moments sharded exactly like their parameters (no full copy).
  fc1 = state.params["image"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"]  # [layers, 32, 128]
  mu = state.opt_state[0].mu["image"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"]
  want_shard = (2, 32 // mesh.get("fsdp", 1), 128 // mesh.get("model", 1))
  assert fc1.sharding.shard_shape(fc1.shape) == want_shard
  assert mu.sharding == fc1.sharding
  assert all(s.data.shape == want_shard for s in mu.addressable_shards)


def unstack_blocks(params, depth):
  """Scanned params ({tower}/encoder/blocks/... with a leading layer axis) -> blockNN/..."""
  out = jax.tree.map(lambda x: x, params)
  for tower in ("image", "text"):
    encoder = dict(out[tower]["encoder"])
    blocks = encoder.pop("blocks")
    for i in range(depth):
      encoder[f"block{i:02d}"] = jax.tree.map(lambda x, i=i: x[i], blocks)
    out[tower] = {**out[tower], "encoder": encoder}
  return out


def test_unscanned_model_equals_scanned(one_device):
  """scan_layers only changes how the blocks are compiled and stored, not the function."""
  params = one_device[2]
  batch = host_batch(small_config(), 0)
  outputs = []
  for scan, p in ((True, params), (False, unstack_blocks(params, 2))):
    model = flip_lib.from_config(small_config(scan_layers=scan).model)
    outputs.append(jit_apply(model, {"params": p}, batch["image"], batch["text"], mask_ratio=0.5,
                             rngs={"mask": jax.random.key(5)}))
  for got, want in zip(*outputs):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def grads_and_memory(c, batch_size=64):
  """Gradient of the loss on one fixed batch and the compiled step's memory (one device)."""
  c.input.global_batch_size = batch_size
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
  model, init_fn, abstract, step_fn = train_step.build(c, mesh, 0.5)
  state = init_fn(jax.random.key(0))
  batch = sharding.global_batch(host_batch(c, 0), mesh)

  def loss(params):
    img, txt, scale = model.apply({"params": params}, batch["image"], batch["text"],
                                  mask_ratio=0.5, rngs={"mask": jax.random.key(3)})
    return train_step.losses.infonce(img, txt, scale)

  value, grads = jax.jit(jax.value_and_grad(loss))(state.params)
  compiled = step_fn.lower(abstract, *train_step.abstract_inputs(c, mesh)).compile()
  return float(value), grads, memory.report(compiled, abstract), state


@pytest.fixture(scope="module")
def no_remat():
  return grads_and_memory(small_config(depth=4))


@SLOW
@pytest.mark.parametrize("policy", ["dots", "full"])
def test_remat_keeps_gradients_and_saves_memory(policy, no_remat):
  c = small_config(depth=4)
  c.model.image.remat = c.model.text.remat = policy
  value, grads, report, _ = grads_and_memory(c)
  want_value, want_grads, want_report, _ = no_remat
  assert value == pytest.approx(want_value, rel=1e-6)
  # Recomputation reorders float sums: entries of ~1e-2 differ by up to ~1e-6 (seen on an AMD EPYC
  # CPU, also with the code before the options refactor).
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-6),
               grads, want_grads)
  # Recomputing in the backward pass keeps fewer activations alive.
  assert report.temporaries < want_report.temporaries, (report, want_report)
  assert report.params == want_report.params and report.opt_state == want_report.opt_state


def test_remat_per_tower_changes_only_that_tower():
  c = small_config(depth=4)
  c.model.image.remat = "full"
  model = flip_lib.from_config(c.model)
  assert model.image.options.remat == "full" and model.text.options.remat == "none"
  assert model.image.options.scan == model.text.options.scan == c.model.scan_layers


@SLOW
def test_bfloat16_compute_keeps_float32_master_weights(no_remat):
  c = small_config(depth=4, dtype="bfloat16")
  value, grads, report, state = grads_and_memory(c)
  want_value, want_grads, _, _ = no_remat
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
  assert {x.dtype for x in jax.tree.leaves(state.opt_state) if x.ndim} == {jnp.dtype(jnp.float32)}
  assert {x.dtype for x in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
  assert value == pytest.approx(want_value, rel=2e-2)
  # Same direction as the float32 gradient, up to bfloat16 rounding of the activations.
  g, w = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]) for t in (grads, want_grads))
  assert g @ w / (np.linalg.norm(g) * np.linalg.norm(w)) > 0.99
  # The towers' matmuls run in bfloat16 (the projections and the loss stay float32).
  model = flip_lib.from_config(c.model)
  jaxpr = str(jax.make_jaxpr(lambda p: model.apply(
      {"params": p}, jnp.zeros((2, 16, 16, 3)), jnp.ones((2, 8), jnp.int32)))(state.params))
  dots = [line for line in jaxpr.splitlines() if "= dot_general" in line]
  bf16 = [line for line in dots if line.split(":")[1].startswith("bf16")]
  # Per scanned block (traced once per tower): q, k, v, out, fc1, fc2 and attention x values in
  # bfloat16, the attention logits accumulated in float32; plus the patch embedding in
  # bfloat16 and the two float32 projections.
  assert len(bf16) == 2 * 7 + 1 and len(dots) == len(bf16) + 2 + 2, dots


@SLOW
def test_memory_report_counts_sharded_state():
  """Per-device parameter bytes shrink with fsdp (ZeRO), activations stay split over the batch
  (as with data parallelism), and the report adds up."""
  reports = {}
  for name, mesh_shape in (("one", {}), ("data", dict(data=8)), ("fsdp", dict(fsdp=8))):
    c = small_config(mesh_shape)
    c.input.global_batch_size = 512
    mesh = sharding.make_mesh(c.mesh, jax.devices()[:8 if mesh_shape else 1])
    _, _, abstract, step_fn = train_step.build(c, mesh, 0.5)
    compiled = step_fn.lower(abstract, *train_step.abstract_inputs(c, mesh)).compile()
    reports[name] = memory.report(compiled, abstract)
  total = sum(math.prod(x.shape) * 4 for x in jax.tree.leaves(abstract.params))
  assert reports["one"].params == reports["data"].params == total
  assert reports["one"].opt_state == pytest.approx(2 * total, abs=64)  # mu, nu (+ step count)
  assert reports["fsdp"].params < total / 4  # every kernel's `embed` rows split 8 ways
  # Activations: an eighth of one device's under both meshes (FSDP gathers weights, not data).
  assert reports["data"].temporaries < reports["one"].temporaries / 4
  assert reports["fsdp"].temporaries < 1.5 * reports["data"].temporaries, reports
  r = reports["fsdp"]
  assert r.peak == r.arguments + r.outputs - r.aliased + r.temporaries + r.code
  assert "per device" in str(r)


# ---- errors before any compile --------------------------------------------------------------

def init_error(c, devices=None):
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:8] if devices is None else devices)
  sharding.check_batch(c.input.global_batch_size, mesh)
  train_step.init_state(c, flip_lib.from_config(c.model), optim.make(c), mesh)


@pytest.mark.parametrize("mutate,devices,message", [
    (lambda c: c.mesh.update(data=4), None, "needs 4 devices but there are 8"),
    (lambda c: c.mesh.update(data=3, fsdp=-1), None, "not divisible by 3"),
    (lambda c: c.mesh.update(data=-1, fsdp=-1), None, "Only one mesh axis may be -1"),
    (lambda c: c.mesh.update(data=8, pipeline=1), None, "Unknown mesh axes"),
    (lambda c: (c.mesh.update(data=8), c.input.update(global_batch_size=12)), None,
     "use a multiple of 8"),
    (lambda c: c.update(logical_axis_rules=tuple(
        r for r in sharding.DEFAULT_LOGICAL_AXIS_RULES if r[0] != "mlp")), None,
     "logical axes ['mlp'] that no rule"),
    (lambda c: c.update(logical_axis_rules=sharding.DEFAULT_LOGICAL_AXIS_RULES + (
        ("extra", "tensor"),)), None, "must be (logical_name, mesh_axes)"),
    (lambda c: c.mesh.update(data=1, fsdp=1, model=8), None,
     "'heads' dimension of size 2 cannot be split 8 ways"),
    (lambda c: (c.mesh.update(data=1, fsdp=1, model=2), c.model.text.update(vocab_size=63)),
     jax.devices()[:2], "'vocab' dimension of size 63 cannot be split 2 ways"),
], ids=["mesh-too-big", "indivisible-devices", "two-free-axes", "unknown-axis", "batch",
        "unmatched-rule", "unknown-mesh-axis", "heads", "vocab"])
def test_bad_scale_settings_fail_before_compiling(mutate, devices, message):
  c = small_config()
  c.mesh.update(data=-1)
  mutate(c)
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")
                     .replace("(", r"\(").replace(")", r"\)")):
    init_error(c, devices)


@pytest.mark.parametrize("field,value,message", [
    ("dtype", "float16", "config.model.dtype='float16'"),
    ("image.remat", "everything", "config.model.image.remat='everything'")])
def test_bad_model_levers_are_named(field, value, message):
  c = small_config()
  *parent, leaf = field.split(".")
  (c.model[parent[0]] if parent else c.model)[leaf] = value
  with pytest.raises(ValueError, match=message):
    config_lib.resolve(c)  # the config gate checks every choice
