"""Weight-decay parameter groups and the AdamW of the MAE recipe.

Groups as in the official code: frozen parameters (the fixed pos embeds) are left out; 1-D
tensors (norms, biases) and names ending in ``.bias`` get no decay; everything else, cls_token
and mask_token included, decays. The lr of every group is a 0-dim tensor on the parameters'
device, so changing it never recompiles a compiled optimizer step nor copies host -> device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from fastmae.train.master_weights import MasterWeights


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """[{"params": decayed, "weight_decay": wd}, {"params": undecayed, "weight_decay": 0}]; frozen excluded."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float,
                    master: MasterWeights | None = None) -> torch.optim.AdamW:
    """AdamW (0.9, 0.95), fused (one kernel per step on CUDA; also available on CPU).

    The fused implementation also honours a device-side ``found_inf`` flag, which the train
    step uses to skip non-finite updates without a host sync. With ``master`` (bf16 weights) it
    updates the fp32 masters in place of the model's bf16 parameters, in the same groups and order.
    """
    groups = param_groups(model, weight_decay)
    return adamw(master.substitute(groups) if master is not None else groups, lr, betas=(0.9, 0.95))


def adamw(groups: list[dict[str, object]], lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """Fused AdamW over ``groups`` with every group's lr a 0-dim tensor on its parameters' device."""
    device = groups[0]["params"][0].device
    for group in groups:
        group["lr"] = torch.tensor(lr, dtype=torch.float32, device=device)
    return torch.optim.AdamW(groups, lr=torch.tensor(lr), betas=betas, fused=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write ``lr`` (times the group's ``lr_scale``, if any: layer-wise decay) into every group's lr tensor
    in place (a device fill, no sync, no recompile)."""
    for group in optimizer.param_groups:
        group["lr"].fill_(lr * group.get("lr_scale", 1.0))
