"""Loading pretrained encoder weights into the classifier of :mod:`fastmae.eval.vit`.

Accepted files (``--finetune``): our ``encoder.pth`` and the official ``mae_pretrain_vit_*.pth``
(both ``{'model': encoder state dict}``), a full fastmae checkpoint or an official full one
(``{'model': encoder + decoder}``; the decoder and ``mask_token`` are dropped), or a bare state dict.
A positional embedding for another grid is resized bicubically, cls row kept, as the official
fine-tuning does when the input size changes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastmae.eval.vit import VisionTransformer, encoder_weights_for
from fastmae.train.checkpoint import load_checkpoint, model_state

ENCODER_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")


@dataclass(frozen=True)
class LoadedWeights:
    """What :func:`load_pretrained` did: tensors loaded, keys left at their init, file kind."""

    loaded: int
    missing_keys: tuple[str, ...]  # the head and fc_norm: they are trained from their init
    source: str  # "encoder-only" or "full (decoder dropped)"


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, 1 + h*w, D) -> (1, 1 + grid[0]*grid[1], D): the patch rows resized bicubically, the cls row kept."""
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"pos_embed has {patches.shape[1]} patch rows, not a square grid: cannot resize it")
    if (side, side) == tuple(grid):
        return pos_embed
    image = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    resized = F.interpolate(image, size=grid, mode="bicubic", align_corners=False)
    return torch.cat([cls, resized.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos_embed.dtype)], 1)


def load_pretrained(model: VisionTransformer, path: str | os.PathLike) -> LoadedWeights:
    """Load the encoder of the checkpoint at ``path`` into ``model``; the head keeps its init.

    Raises ValueError naming the file when encoder tensors are absent or have the wrong shape
    (e.g. a ViT-L file given for ``--model vit_base_patch16``).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--finetune {path}: no such checkpoint file")
    state = model_state(load_checkpoint(path))
    encoder = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}
    if not encoder:
        raise ValueError(f"--finetune {path}: no encoder weights (cls_token, pos_embed, patch_embed.*, blocks.*)")
    if "pos_embed" in encoder:
        encoder["pos_embed"] = resize_pos_embed(encoder["pos_embed"], model.patch_embed.grid_size)
    wanted = encoder_weights_for(model, encoder)
    own = model.state_dict()
    absent = sorted(k for k in own if k.startswith(ENCODER_PREFIXES) and k not in wanted)
    if absent:
        raise ValueError(f"--finetune {path}: lacks {len(absent)} encoder tensors of --model, e.g. "
                         f"{', '.join(absent[:4])} (a checkpoint of another model size?)")
    wrong = [f"{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})" for k, v in wanted.items()
             if v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"--finetune {path}: tensor shapes do not match --model: {'; '.join(wrong[:4])}")
    missing = model.load_state_dict(wanted, strict=False).missing_keys
    source = "encoder-only" if len(encoder) == len(state) else "full (decoder dropped)"
    return LoadedWeights(len(wanted), tuple(missing), source)
