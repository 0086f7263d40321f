"""A results table over many evaluation sets: python -m flip.benchmark_suite --workdir=RUN
[--tasks=clip_benchmark] [--tasks.wds_root=DIR] [--select=imagenet1k,flickr30k] [--step=N]
[--output=DIR] (or flip-benchmark ...).

Runs the tasks of a task list (a file of configs/benchmarks/ by name, `clip_benchmark` by
default, or a path; `:tfds` picks its TFDS variant) on the newest checkpoint of the workdir (or
--step) and writes results.json, results.csv and results.md (CLIP_benchmark's column names; see
flip/evaluation/benchmark.py) into --output (default: RUN/benchmark), then prints the markdown.
The model's config is the one the run saved (RUN/config.json).
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
from ml_collections import config_flags

from flip import cli
from flip import distributed

_TASKS = config_flags.DEFINE_config_file(
    "tasks", None, "Task list: a name (clip_benchmark, clip_benchmark:tfds, demo) or a file; "
    "default clip_benchmark.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "A training (or import) workdir with checkpoints.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_SELECT = flags.DEFINE_list("select", None, "Only these tasks of the list (comma-separated).")
_OUTPUT = flags.DEFINE_string("output", None, "Directory for the tables (default: "
                              "WORKDIR/benchmark).")
flags.mark_flags_as_required(["workdir"])
flags.adopt_module_key_flags(distributed)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  from flip import checkpoint  # pylint: disable=g-import-not-at-top
  from flip import config_lib  # pylint: disable=g-import-not-at-top
  from flip.evaluation import benchmark  # pylint: disable=g-import-not-at-top
  task_list = _TASKS.value
  if task_list is None:
    task_list = config_lib.load_recipe(
        config_lib.recipe_path("clip_benchmark", config_lib.TASK_LISTS))
  tasks = benchmark.task_options(task_list, _SELECT.value)
  config = checkpoint.read_config(_WORKDIR.value)
  result = benchmark.run(config, _WORKDIR.value, tasks, _STEP.value)
  paths = benchmark.write(result, _OUTPUT.value or os.path.join(_WORKDIR.value, "benchmark"))
  print(benchmark.markdown(result), end="")
  print("Written: " + ", ".join(paths))


def run():
  """The flip-benchmark console script."""
  cli.run(main, task_flags=("tasks",))


if __name__ == "__main__":
  run()
