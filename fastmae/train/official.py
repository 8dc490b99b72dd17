"""Compatibility with the official ``main_pretrain.py``: its launcher flags and its checkpoints.

Launcher flags (applied to the environment before the process group starts, which reads env://):
``--local_rank`` (torch.distributed.launch) fills LOCAL_RANK when unset; ``--dist_on_itp`` copies
OpenMPI's OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK}; ``--dist_url tcp://HOST:PORT`` sets
MASTER_ADDR/MASTER_PORT; ``--world_size`` must agree with the launcher (the launcher's wins).

Checkpoints: an official training checkpoint is ``{model, optimizer, epoch, scaler, args}``, written
at the end of epoch ``epoch``. Its optimizer comes from AdamW over two groups, the undecayed one
first (fastmae's order is the reverse), with per-parameter ``step``, ``exp_avg``, ``exp_avg_sq``.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, MutableMapping

import torch
from torch import nn

from fastmae.train.optim import param_groups

log = logging.getLogger("fastmae.train")
OFFICIAL_KEYS = ("model", "optimizer", "epoch")


def apply_launcher_flags(args: argparse.Namespace, environ: MutableMapping[str, str] = os.environ) -> None:
    """Give the official launcher flags their meaning by writing what env:// reads into ``environ``."""
    if args.dist_on_itp:
        names = {"RANK": "OMPI_COMM_WORLD_RANK", "WORLD_SIZE": "OMPI_COMM_WORLD_SIZE",
                 "LOCAL_RANK": "OMPI_COMM_WORLD_LOCAL_RANK"}
        missing = [ompi for ompi in names.values() if ompi not in environ]
        if missing:
            raise ValueError(f"--dist_on_itp: {', '.join(missing)} not set (start the processes with mpirun)")
        for ours, ompi in names.items():
            environ[ours] = environ[ompi]
    if args.local_rank >= 0 and "LOCAL_RANK" not in environ:
        environ["LOCAL_RANK"] = str(args.local_rank)
    if args.dist_url != "env://":
        scheme, _, address = args.dist_url.partition("://")
        host, _, port = address.rpartition(":")
        if scheme != "tcp" or not host or not port.isdigit():
            raise ValueError(f"--dist_url {args.dist_url}: expected env:// or tcp://HOST:PORT")
        environ["MASTER_ADDR"], environ["MASTER_PORT"] = host, port
    launched = int(environ.get("WORLD_SIZE", "1"))
    if args.world_size != 1 and args.world_size != launched:
        if "WORLD_SIZE" not in environ:
            raise ValueError(f"--world_size {args.world_size}: no launcher started {args.world_size} processes; "
                             f"use torchrun --nproc_per_node {args.world_size} -m fastmae pretrain ...")
        log.warning("--world_size %d ignored: the launcher started %d processes", args.world_size, launched)


def is_official_training_checkpoint(state: Mapping[str, object]) -> bool:
    return all(key in state for key in OFFICIAL_KEYS) and "format" not in state


def convert_optimizer_state(official: Mapping[str, object], model: nn.Module,
                            current: Mapping[str, object]) -> dict[str, object]:
    """An official AdamW state dict -> one for fastmae's optimizer (``current`` = its ``state_dict()``).

    The two groups are matched by size (and by weight decay 0 for the undecayed one if both have the
    same size); parameters within a group are in ``named_parameters`` order in both. Our groups keep
    their own hyper-parameters (the lr schedule sets the lr before every step).
    """
    ours = [group["params"] for group in param_groups(model, weight_decay=1.0)]  # [decayed, undecayed]
    saved_groups = official["param_groups"]
    if len(saved_groups) != 2:
        raise ValueError(f"official optimizer state has {len(saved_groups)} parameter groups, expected 2")
    sizes = [len(group["params"]) for group in saved_groups]
    no_decay_first = sizes[0] == len(ours[1]) and (sizes[0] != sizes[1] or saved_groups[0]["weight_decay"] == 0)
    matched = [saved_groups[1], saved_groups[0]] if no_decay_first else list(saved_groups)
    if [len(group["params"]) for group in matched] != [len(params) for params in ours]:
        raise ValueError(f"official optimizer groups hold {sizes} tensors; this model's groups hold "
                         f"{[len(p) for p in ours]} (decayed, undecayed): not the same model")
    state: dict[int, dict[str, torch.Tensor]] = {}
    saved_state = official["state"]
    for our_group, saved_group, params in zip(current["param_groups"], matched, ours):
        for our_index, saved_index, param in zip(our_group["params"], saved_group["params"], params):
            if saved_index not in saved_state:
                continue  # never stepped: AdamW starts it fresh, as it would have
            entry = saved_state[saved_index]
            if entry["exp_avg"].shape != param.shape:
                raise ValueError(f"official optimizer state {saved_index} has shape {tuple(entry['exp_avg'].shape)}, "
                                 f"the parameter {tuple(param.shape)}")
            state[our_index] = {"step": torch.as_tensor(float(entry["step"]), dtype=torch.float32),
                                "exp_avg": entry["exp_avg"], "exp_avg_sq": entry["exp_avg_sq"]}
    return {"state": state, "param_groups": current["param_groups"]}
