"""One process of tests/test_multihost.py's step-level runs (also runs alone, as the reference).

python tests/multihost_worker.py --out=DIR --mesh=fsdp=4 [--mesh=data=2,fsdp=2 ...]

The process joins its run through flip.distributed.initialize() (JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID; none for a single process), then for each mesh: trains a tiny
FLIP a few steps on a fixed synthetic global batch, each process feeding only its own rows;
checkpoints the state with flip.checkpoint.Checkpointer from every process and restores it.
Every process writes DIR/result_<mesh>_<process>.json (losses, grad norms, whether the restored
state equals the saved one); process 0 also writes the final params, DIR/params_<mesh>.npz.
The checkpoint stays in DIR/ckpt_<mesh>. First, checkpoint.check_writable is tried on a shared
and on a per-process directory (DIR/workdir_check_<process>.json), and with several processes,
an evaluator found by process 0 only (DIR/evaluators_<process>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from flip import checkpoint
from flip import config_lib
from flip import distributed
from flip import optim
from flip import sharding
from flip import train_step
from flip.models import flip as flip_lib

STEPS = 3
GLOBAL_BATCH = 8


def tiny_config(mesh: dict[str, int]):
  """A FLIP small enough to compile in seconds, on a mesh of 4 devices."""
  c = config_lib.base_config()
  c.model.image.update(patch_size=8, depth=2, width=32, num_heads=2)
  c.model.text.update(vocab_size=64, depth=1, width=32, num_heads=2, max_len=8)
  c.model.embed_dim = 16
  c.input.update(image_size=16, text_len=8, global_batch_size=GLOBAL_BATCH)
  c.optim.update(base_lr=0.3, warmup_steps=1)  # lr 1e-2: every step moves every parameter
  # The attention key bias has no gradient (softmax ignores a shift): only round-off, which
  # Adam with a tiny eps would turn into lr-sized steps that differ between runs.
  c.optim.eps = 1e-3
  c.total_steps = 10
  c.mesh.update(data=1, fsdp=1, model=1)
  c.mesh.update(mesh)
  return c


def mesh_axes(mesh_arg: str) -> dict[str, int]:
  """'data=2,fsdp=2' -> {'data': 2, 'fsdp': 2}."""
  return {k: int(v) for k, v in (kv.split("=") for kv in mesh_arg.split(","))}


def global_batch(step: int) -> dict:
  """The same synthetic global batch in every process and every run."""
  rng = np.random.RandomState(1000 + step)
  return {"image": rng.normal(size=(GLOBAL_BATCH, 16, 16, 3)).astype(np.float32),
          "text": rng.randint(1, 64, size=(GLOBAL_BATCH, 8)).astype(np.int32)}


def local_rows(mesh, num_rows: int):
  """The global batch rows this process's devices hold (what it feeds global_batch)."""
  spans = sharding.batch_sharding(mesh).addressable_devices_indices_map((num_rows,)).values()
  starts = sorted({s[0].indices(num_rows)[:2] for s in spans})
  return np.concatenate([np.arange(a, b) for a, b in starts])


def to_host(tree, mesh):
  """{path: numpy array} of a (possibly cross-process sharded) tree, on every process."""
  gathered = jax.jit(lambda t: t, out_shardings=sharding.replicated(mesh))(tree)
  return {jax.tree_util.keystr(path): np.asarray(x)
          for path, x in jax.tree_util.tree_flatten_with_path(gathered)[0]}


def run(mesh_arg: str, out: str) -> None:
  """Trains, checkpoints and restores on one mesh; writes this process's results."""
  start = time.time()
  config = tiny_config(mesh_axes(mesh_arg))
  mesh = sharding.make_mesh(config.mesh)
  model = flip_lib.from_config(config.model)
  init_fn, abstract = train_step.init_state(config, model, optim.make(config), mesh)
  state = init_fn(jax.random.key(0))
  step_fn = train_step.jit_train_step(model, config, config.mask_ratio, jax.random.key(1),
                                      abstract, mesh)
  rows = local_rows(mesh, GLOBAL_BATCH)
  losses, grad_norms, lr_args = [], [], optim.schedule_args(config)
  for step in range(STEPS):
    local = {k: v[rows] for k, v in global_batch(step).items()}
    state, metrics = step_fn(state, sharding.global_batch(local, mesh), lr_args)
    losses.append(float(metrics["loss"]))
    grad_norms.append(float(metrics["grad_norm"]))

  trained = time.time()
  tag = mesh_arg.replace("=", "").replace(",", "_")
  saved = to_host(state, mesh)
  ckpt_dir = os.path.join(out, f"ckpt_{tag}")
  # Like the input positions flip.train saves: every process's rows, gathered (a collective).
  data = {"rows": np.asarray(multihost_utils.process_allgather(rows)).tolist()}
  ckpt = checkpoint.Checkpointer(ckpt_dir, 1, 2)
  ckpt.save(STEPS, state, data, force=True)
  ckpt.close()
  ckpt = checkpoint.Checkpointer(ckpt_dir, 1, 2)
  restored, restored_data = ckpt.restore(abstract)
  ckpt.close()
  again = to_host(restored, mesh)
  seconds = {"train": trained - start, "checkpoint": time.time() - trained}
  same = (saved.keys() == again.keys() and
          all(np.array_equal(saved[k], again[k]) for k in saved) and restored_data == data)
  shardings_kept = all(a.sharding == b.sharding for a, b in
                       zip(jax.tree.leaves(restored), jax.tree.leaves(abstract)))

  pid = jax.process_index()
  result = {"losses": losses, "grad_norms": grad_norms, "restored_equal": bool(same),
            "shardings_kept": bool(shardings_kept), "process_count": jax.process_count(),
            "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
            "rows": rows.tolist(), "data": data, "seconds": seconds}
  with open(os.path.join(out, f"result_{tag}_{pid}.json"), "w") as f:
    json.dump(result, f)
  if pid == 0:
    np.savez(os.path.join(out, f"params_{tag}.npz"),
             **{k[len(".params"):]: v for k, v in saved.items() if k.startswith(".params")})


def check_workdirs(out: str) -> None:
  """checkpoint.check_writable on a directory the processes share, then on one per process
  (as hosts without a shared file system would see a local --workdir); writes the outcome."""
  pid = jax.process_index()
  checkpoint.check_writable(os.path.join(out, "shared_workdir"))
  try:
    checkpoint.check_writable(os.path.join(out, f"own_workdir_{pid}"))
    error = None
  except ValueError as e:
    error = str(e)
  with open(os.path.join(out, f"workdir_check_{pid}.json"), "w") as f:
    json.dump({"unshared_error": error,
               "probes_left": os.listdir(os.path.join(out, "shared_workdir"))}, f)


def check_evaluators(out: str) -> None:
  """An evaluator whose data set only some processes found stops every process (it would
  otherwise hang the run at its first evaluation); writes the error each process got."""
  from flip.evaluation import suite  # TensorFlow: imported only here
  config = tiny_config({})
  config.evals.zeroshot = dict(type="zeroshot", dataset="flip_shapes", every_steps=10)
  found = {"zeroshot": None} if jax.process_index() == 0 else {}
  try:
    suite.check_same_everywhere(list(config.evals), found)
    error = None
  except FileNotFoundError as e:
    error = str(e)
  with open(os.path.join(out, f"evaluators_{jax.process_index()}.json"), "w") as f:
    json.dump({"error": error}, f)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--mesh", action="append", required=True, help="e.g. data=2,fsdp=2")
  args = parser.parse_args()
  distributed.initialize()  # from the JAX_* environment variables
  check_workdirs(args.out)
  if jax.process_count() > 1:
    check_evaluators(args.out)
  for mesh in args.mesh:
    run(mesh, args.out)


if __name__ == "__main__":
  main()
