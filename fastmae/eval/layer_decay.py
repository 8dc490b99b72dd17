"""Layer-wise lr decay parameter groups of the fine-tuning recipe.

Layer ids: ``cls_token``, ``pos_embed`` and ``patch_embed.*`` are layer 0, ``blocks.i.*`` layer i + 1,
everything after the blocks (``fc_norm``, ``norm``, ``head``) layer depth + 1. Layer l's lr is scaled by
``layer_decay ** (depth + 1 - l)``, so the head trains at the full lr and each block below it at
``layer_decay`` times the one above. No weight decay for 1-D tensors (biases, norms), ``cls_token``
and ``pos_embed``; frozen parameters are left out.
"""

from __future__ import annotations

from torch import nn

NO_WEIGHT_DECAY = ("cls_token", "pos_embed")


def layer_id(name: str, depth: int) -> int:
    """The layer of parameter ``name`` in a ViT with ``depth`` blocks (0 .. depth + 1)."""
    if name in NO_WEIGHT_DECAY or name.startswith("patch_embed."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def layer_decay_groups(model: nn.Module, depth: int, weight_decay: float,
                       layer_decay: float) -> list[dict[str, object]]:
    """One group per (layer, decayed or not) that has parameters: ``params``, ``weight_decay``, ``lr_scale``.

    Groups are ordered by layer, decayed before undecayed; :func:`fastmae.train.optim.set_lr` sets each
    group's lr to ``lr * lr_scale``.
    """
    groups: dict[tuple[int, bool], dict[str, object]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decayed = not (param.ndim == 1 or name in NO_WEIGHT_DECAY)
        layer = layer_id(name, depth)
        group = groups.setdefault((layer, decayed), {
            "params": [], "weight_decay": weight_decay if decayed else 0.0,
            "lr_scale": layer_decay ** (depth + 1 - layer), "layer": layer})
        group["params"].append(param)
    return [groups[key] for key in sorted(groups, key=lambda k: (k[0], not k[1]))]
