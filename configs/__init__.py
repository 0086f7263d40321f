"""The recipes: one file per experiment, each with `get_config(arg)`.

In a checkout they are the files of configs/; installed, the package `flip.configs`. Run one by
path (`--config=configs/vitl16_mask50.py`) or by name (`--config=vitl16_mask50`), with an
optional `:arg` (see common.apply_arg).
"""
