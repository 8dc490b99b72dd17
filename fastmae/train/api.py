"""The Python API of MAE pretraining: what ``fastmae pretrain`` itself calls.

    from fastmae.train.api import pretrain
    result = pretrain({"model": "mae_vit_base_patch16", "data_path": "/data/imagenet"}, epochs=800,
                      norm_pix_loss=True, blr=1.5e-4, output_dir="out")
    result.losses, result.checkpoint, result.model, result.stopped_by

A configuration is a mapping of flag names to values: the ``dest`` names of ``fastmae pretrain``
(``batch_size``, ``pin_mem``, ``skip_bad``, ...), every one optional, with the defaults of the
command line (:func:`default_config` lists them all). It may also be the path of a YAML/JSON file
(like the ``config.yaml`` every run writes) or an ``argparse.Namespace`` from
:func:`fastmae.train.args.parse_args`. Keyword arguments override it. Unknown names and values of
the wrong type raise ValueError naming them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from fastmae.train.args import build_parser, check_args
from fastmae.train.config import namespace_from, read_config_file, saved_flags

if TYPE_CHECKING:
    from fastmae.train.pretrain import TrainResult

Config = Mapping[str, object] | argparse.Namespace | str | os.PathLike


def default_config() -> dict[str, object]:
    """Every flag of ``fastmae pretrain`` with its default (``config`` left out)."""
    return saved_flags(build_parser().parse_args([]))


def resolve_config(config: Config | None = None, /, **flags: object) -> argparse.Namespace:
    """The checked flags a run would use: defaults, then ``config``, then ``flags``."""
    if isinstance(config, argparse.Namespace):
        values: dict[str, object] = saved_flags(config)
        where = "config"
    elif isinstance(config, (str, os.PathLike)):
        values, where = read_config_file(config), f"config file {config}"
    else:
        values, where = dict(config or {}), "config"
    values.update(flags)
    return check_args(namespace_from(build_parser(), values, where))


def pretrain(config: Config | None = None, /, **flags: object) -> TrainResult:
    """Pretrain an MAE; returns losses, the last checkpoint, the trained model and how the run ended.

    The run behaves exactly like ``fastmae pretrain`` with the same flags (settings block, progress
    lines, ``OUTPUT_DIR/config.yaml``, ``train.log``, checkpoints). A SIGINT/SIGTERM during the run
    saves a checkpoint and returns early with ``stopped_by`` set (signal handlers are installed only
    when called from the main thread).
    """
    from fastmae.train.pretrain import train

    return train(resolve_config(config, **flags))
