"""Task lists for flip.benchmark_suite: one file per suite, each with `get_config(arg)`.

Run one by name (`--tasks=clip_benchmark`) or by path (`--tasks=configs/benchmarks/demo.py`).
Each returns a ConfigDict with `tasks` (name -> an evaluator's options, as in config.evals but
without every_steps; `{wds_root}` in a dataset is replaced by the field `wds_root`) and the data
locations `wds_root` and `data_dir`. Make `tasks` a ConfigDict(sort_keys=False) to keep the
tasks in the order written (a plain ConfigDict sorts its keys).
"""
