"""Checkpoints: atomic, self-contained, loadable with ``torch.load(weights_only=True)``.

A fastmae checkpoint is a dict of plain data and tensors:
``model``, ``optimizer``, ``train_step`` (GradScaler + skip counters), ``epoch``, ``step_in_epoch``
(optimizer steps done in that epoch), ``global_step``, ``data_position`` (seed, epoch, micro-step in
the epoch), ``args`` (the flags as a dict), ``rng`` (torch, CUDA, numpy and Python states) and
``format``. ``epoch`` + ``model`` keep it readable by code written for the official files.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from fastmae.errors import CheckpointError, one_line

FORMAT = "fastmae-checkpoint-1"
ENCODER_FILE = "encoder.pth"
_NAME = re.compile(r"checkpoint-(\d{8,})\.pth")  # matched in full: 'my_checkpoint-00000001.pth' is not ours
_TEMPORARY = re.compile(r"\.(.+)\.tmp-\d+")  # what atomic_save writes before its rename


# --------------------------------------------------------------------------------------
# RNG state as plain data
# --------------------------------------------------------------------------------------
def rng_state() -> dict[str, object]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }


def set_rng_state(state: dict[str, object]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["internal"]), py_state["gauss"]))


def plain_args(args: argparse.Namespace) -> dict[str, object]:
    """The flags as a dict of str/int/float/bool/None (loadable with weights_only=True)."""
    allowed = (str, int, float, bool, type(None))
    return {k: (v if isinstance(v, allowed) else str(v)) for k, v in vars(args).items()}


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------
def atomic_save(obj: object, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file next to ``path``, fsync it, rename over ``path``, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # the _TEMPORARY pattern
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def checkpoint_path(output_dir: str | os.PathLike, global_step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{global_step:08d}.pth"


def is_fastmae_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds fastmae's format marker (read with mmap: the tensors are not loaded)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable, not a zip, not plain data: not ours either way
        return False
    return isinstance(state, dict) and state.get("format") == FORMAT


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """fastmae's own checkpoints in ``output_dir`` (exact file name and format marker), oldest first.

    Other files, even ones named like a checkpoint, are never listed, so never pruned or resumed from.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found) if is_fastmae_checkpoint(p)]


def remove_temporaries(output_dir: str | os.PathLike) -> list[Path]:
    """Delete what a killed :func:`atomic_save` of a checkpoint or the encoder left; only the lock holder may."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        match = _TEMPORARY.fullmatch(path.name)
        if match and (_NAME.fullmatch(match.group(1)) or match.group(1) == ENCODER_FILE):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def prune_checkpoints(output_dir: str | os.PathLike, keep_last: int) -> None:
    for old in list_checkpoints(output_dir)[:-keep_last]:
        old.unlink(missing_ok=True)


def resolve_resume(resume: str, output_dir: str | os.PathLike) -> Path | None:
    """``--resume``: '' -> None, 'auto' -> the latest checkpoint in output_dir (or None), else that file."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint file")
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, object]:
    """A fastmae checkpoint (weights_only=True), or an official one.

    The official files pickle an ``argparse.Namespace`` under 'args'; that one class is allowed so
    they also load without ``weights_only=False``.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise  # missing, unreadable: the OSError names the file
    except Exception as error:  # not a zip / pickle, truncated, or objects weights_only refuses
        raise CheckpointError(f"{path} is not a readable checkpoint ({one_line(error)[:200]}); "
                              "give a file written by fastmae or the official MAE code") from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    return checkpoint


@contextlib.contextmanager
def fitting(source: str):
    """Report a state that does not fit the model (missing or unexpected keys, size mismatch) as a
    CheckpointError naming ``source`` (the flag and file)."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{source} does not fit this model and these flags: {one_line(error)}") from error


def model_state(checkpoint: dict[str, object]) -> dict[str, torch.Tensor]:
    """The model tensors of a fastmae or official checkpoint (full or encoder-only): the 'model' key."""
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("checkpoint has no 'model' state dict of tensors")
    return state


def export_encoder(encoder_state: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write an encoder-only file in the official ``mae_pretrain_vit_*.pth`` layout: {'model': encoder}."""
    return atomic_save({"model": {k: v.detach().cpu() for k, v in encoder_state.items()}}, path)


# --------------------------------------------------------------------------------------
# Model and optimizer state, plain or FSDP-sharded
# --------------------------------------------------------------------------------------
def gather_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                          fsdp: bool) -> tuple[dict[str, object], dict[str, object]]:
    """(model, optimizer) state dicts with full tensors; under FSDP every rank must call this."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    from fastmae.train.modeling import unwrap

    return unwrap(model).state_dict(), optimizer.state_dict()


def restore_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: dict[str, object],
                           optim_state: dict[str, object], fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=True))
        return
    from fastmae.train.modeling import unwrap

    unwrap(model).load_state_dict(model_state)
    optimizer.load_state_dict(optim_state)
