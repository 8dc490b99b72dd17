"""LARS: SGD with momentum and a per-tensor trust ratio, the optimizer of the linear-probe recipe.

For each parameter with more than one dimension (weights; not biases or norm parameters):
``update = grad + weight_decay * p``, scaled by ``trust_coefficient * ||p|| / ||update||`` when both
norms are positive (else by 1). Every parameter then follows momentum SGD:
``mu = momentum * mu + update``, ``p -= lr * mu``. lr is a 0-dim tensor per group (set in place by
the schedule, no host sync); a device-side ``found_inf`` attribute, when set, leaves parameters
and momentum unchanged (how the train step skips a non-finite step without reading it back).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class LARS(torch.optim.Optimizer):
    def __init__(self, params: Iterable[torch.nn.Parameter] | Iterable[dict], lr: float | torch.Tensor = 0.0,
                 weight_decay: float = 0.0, momentum: float = 0.9, trust_coefficient: float = 0.001) -> None:
        if momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                    "trust_coefficient": trust_coefficient}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        skip = getattr(self, "found_inf", None)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    one = torch.ones_like(param_norm)
                    ratio = torch.where(param_norm > 0, torch.where(
                        update_norm > 0, group["trust_coefficient"] * param_norm / update_norm, one), one)
                    update = update * ratio
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                new_mu = mu * group["momentum"] + update
                new_p = p - group["lr"] * new_mu
                if skip is None:
                    mu.copy_(new_mu)
                    p.copy_(new_p)
                else:
                    keep = skip > 0
                    mu.copy_(torch.where(keep, mu, new_mu))
                    p.copy_(torch.where(keep, p, new_p))
        return loss
