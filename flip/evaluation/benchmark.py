"""A results table over many evaluation tasks (python -m flip.benchmark_suite).

A task list (configs/benchmarks/*.py) names tasks, each an evaluator's options as in config.evals.
Every task runs on one checkpoint; the table has one row per task with CLIP_benchmark's column
names, so that rows line up with open_clip's and CLIP_benchmark's published results:

  task, dataset, split, type (zeroshot_classification | zeroshot_retrieval | linear_probe),
  acc1, acc5, mean_per_class_recall, image_retrieval_recall@k, text_retrieval_recall@k, (other
  metrics: {k}shot_acc1, C), images (embedded), seconds, images_per_s, status ("ok" or why not).

It is written as results.json, results.csv and results.md. A task whose data set is not found is
listed with status "missing: ..." and the others go on; if none is found, it is an error.
"""

from __future__ import annotations

import csv
import json
import os
import time

import jax
import ml_collections
import tensorflow as tf
from absl import logging

from flip import errors
from flip.evaluation import suite

TASK_TYPES = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval",
              "linear_probe": "linear_probe"}
METRIC_COLUMNS = ("acc1", "acc5", "mean_per_class_recall",
                  *(f"image_retrieval_recall@{k}" for k in (1, 5, 10)),
                  *(f"text_retrieval_recall@{k}" for k in (1, 5, 10)))
FILES = ("results.json", "results.csv", "results.md")


def task_options(task_list: ml_collections.ConfigDict, select: list[str] | None = None
                 ) -> dict[str, dict]:
  """{name: evaluator options} of a task list, `{wds_root}` filled in, in the list's order;
  `select`: only these tasks (names of the list)."""
  tasks = task_list.tasks.to_dict()
  if select:
    unknown = [name for name in select if name not in tasks]
    if unknown:
      raise errors.ConfigError(f"--select names unknown task(s) {unknown}; the task list has "
                               f"{list(tasks)}.")
    tasks = {name: tasks[name] for name in select}
  if not tasks:
    raise errors.ConfigError("The task list has no tasks.")
  out = {}
  for name, options in tasks.items():
    options = dict(options)
    dataset = str(options.get("dataset", ""))
    if "{wds_root}" in dataset:
      if not task_list.wds_root:
        raise errors.ConfigError(
            f"Task {name} reads {dataset}: set --tasks.wds_root to the folder that holds the "
            "CLIP_benchmark webdataset sets (see the README's evaluation data).")
      options["dataset"] = dataset.replace("{wds_root}", task_list.wds_root.rstrip("/"))
    if options.get("data_dir") is None and task_list.get("data_dir"):
      options["data_dir"] = task_list.data_dir
    options.setdefault("every_steps", 1)  # an evaluator option; the suite runs each task once
    out[name] = options
  return out


def run(config: ml_collections.ConfigDict, workdir: str, tasks: dict[str, dict],
        step: int | None = None) -> dict:
  """{"workdir", "step", "rows"}: every task evaluated on the checkpoint (see the docstring)."""
  config, embedder, params, step = suite.load_model(config, workdir, step)
  rows, evaluators = [], {}
  for name, options in tasks.items():  # every data set is looked up before the first runs
    row = {"task": name, "dataset": options["dataset"],
           "split": options.get("split") or options.get("test_split", "test"),
           "type": TASK_TYPES.get(options.get("type"), options.get("type"))}
    try:
      evaluators[name] = suite.make_evaluator(options, config, embedder, name)
      row["status"] = "ok"
    except FileNotFoundError as e:
      row["status"] = f"missing: {e}"
      logging.warning("Task %s is left out: %s", name, e)
    rows.append(row)
  suite.check_same_everywhere(list(tasks), evaluators)
  if not evaluators:
    raise errors.NotFoundError("No task's data set was found: " + " | ".join(
        f"{r['task']}: {r['status'][len('missing: '):]}" for r in rows))
  for row in rows:
    if row["task"] not in evaluators:
      continue
    before, start = embedder.images_embedded, time.perf_counter()
    metrics = evaluators[row["task"]](params)
    seconds = time.perf_counter() - start
    images = embedder.images_embedded - before
    row.update(metrics, images=images, seconds=round(seconds, 2),
               images_per_s=round(images / seconds, 2) if seconds > 0 else None)
    logging.info("%s: %s", row["task"], ", ".join(
        f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
  return {"workdir": workdir, "step": step, "rows": rows}


def columns(rows: list[dict]) -> list[str]:
  """The table's columns: the fixed ones, then any other metric in order of appearance."""
  present = {k for row in rows for k in row}
  head = ["task", "dataset", "split", "type"]
  tail = ["images", "seconds", "images_per_s", "status"]
  known = [c for c in METRIC_COLUMNS if c in present]
  other = []
  for row in rows:
    other += [k for k in row if k not in head + tail + known + other]
  return head + known + other + tail


def markdown(result: dict) -> str:
  """The table as markdown: metrics in percent with one decimal, '-' where a task has none."""
  rows = result["rows"]
  cols = [c for c in columns(rows) if c not in ("dataset", "status")]
  percent = set(METRIC_COLUMNS) | {c for c in cols if c.endswith("acc1")}
  lines = [f"Checkpoint step {result['step']} of {result['workdir']}; metrics in %.", "",
           "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
  for row in rows:
    cells = []
    for c in cols:
      value = row.get(c)
      if value is None:
        cells.append("-")
      elif c in percent and isinstance(value, float):
        cells.append(f"{100 * value:.1f}")
      elif isinstance(value, float):
        cells.append(f"{value:.4g}")
      else:
        cells.append(str(value))
    lines.append("| " + " | ".join(cells) + " |")
  missing = [r for r in rows if r["status"] != "ok"]
  if missing:
    lines += [""] + [f"- {r['task']}: {r['status']}" for r in missing]
  return "\n".join(lines) + "\n"


def write(result: dict, output_dir: str) -> list[str]:
  """results.json, results.csv and results.md in output_dir (process 0 only); their paths."""
  paths = [os.path.join(output_dir, f) for f in FILES]
  if jax.process_index() != 0:
    return paths
  tf.io.gfile.makedirs(output_dir)
  with tf.io.gfile.GFile(paths[0], "w") as f:
    json.dump(result, f, indent=2)
  cols = columns(result["rows"])
  with tf.io.gfile.GFile(paths[1], "w") as f:
    writer = csv.DictWriter(f, fieldnames=cols, restval="")
    writer.writeheader()
    writer.writerows(result["rows"])
  with tf.io.gfile.GFile(paths[2], "w") as f:
    f.write(markdown(result))
  return paths
