"""bf16 matrix weights with fp32 master copies in the optimizer (``fastmae pretrain --weights bf16``).

Under bf16 autocast every forward casts each Linear / patch-conv weight and bias from fp32 to bf16
(autocast's weight copies). With ``--weights bf16`` the model holds those parameters in bf16, so
autocast has nothing to cast, and an fp32 master copy of each is what the optimizer updates:

* backward leaves bf16 gradients on the model's parameters (DDP all-reduces them in bf16);
* :meth:`MasterWeights.take_gradients` moves them to the masters as fp32, one tensor at a time, freeing
  each bf16 gradient as it goes; the non-finite check and fused AdamW (``found_inf``) see the masters;
* :meth:`MasterWeights.publish` rounds the updated masters back into the bf16 parameters (a skipped
  step rounds the unchanged masters: the same bits).

LayerNorm parameters, cls/mask tokens and the positional tables stay fp32 (autocast does not cast
them for a matrix product). The forward reads exactly the bf16 values autocast would have made from the
master, and a gradient rounded to bf16 then widened is what autocast's cast passes back, so with one
micro-step per optimizer step the training is bitwise that of ``--weights fp32`` (the tests check it);
over several micro-steps the gradients accumulate in bf16. Checkpoints hold the fp32 masters under the
model's names (:meth:`full_precision`), so a checkpoint does not depend on this flag and resumes exactly.
Under FSDP2 this class is not used: its ``MixedPrecisionPolicy(param_dtype=bf16)`` keeps fp32 shards
(the master) and gathers bf16 weights itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

# modules whose parameters autocast casts for a matrix product
_MATMUL_MODULES = (nn.Linear, nn.Conv2d)


def matmul_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable parameters of ``model``'s Linear and Conv2d modules, by state-dict name."""
    found: dict[str, nn.Parameter] = {}
    for prefix, module in model.named_modules():
        if isinstance(module, _MATMUL_MODULES):
            for name, param in module.named_parameters(recurse=False):
                if param.requires_grad:
                    found[f"{prefix}.{name}" if prefix else name] = param
    return found


class MasterWeights:
    """Holds ``model``'s matrix weights in ``dtype`` (converted in place) and their fp32 masters.

    Build it before wrapping the model (DDP, torch.compile) and the optimizer: :meth:`substitute`
    puts the masters in the optimizer's parameter groups.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        params = matmul_parameters(model)
        if not params:
            raise ValueError("--weights bf16: the model has no Linear or Conv2d parameters to hold in bf16")
        not_fp32 = [name for name, p in params.items() if p.dtype != torch.float32]
        if not_fp32:
            name = not_fp32[0]
            raise ValueError(f"--weights bf16 expects fp32 weights to start from; {name} is {params[name].dtype}")
        self.names = list(params)
        self.params = list(params.values())
        self.masters = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for param in self.params:
                param.data = param.data.to(dtype)  # same Parameter object: hooks, names and DDP see it
        self._master_of = {id(p): m for p, m in zip(self.params, self.masters)}

    def substitute(self, groups: list[dict[str, object]]) -> list[dict[str, object]]:
        """Optimizer parameter groups with each low-precision parameter replaced by its fp32 master."""
        return [{**group, "params": [self._master_of.get(id(p), p) for p in group["params"]]} for group in groups]

    def take_gradients(self) -> None:
        """Move the low-precision gradients onto the masters as fp32 (None stays None)."""
        for param, master in zip(self.params, self.masters):
            master.grad = None if param.grad is None else param.grad.float()
            param.grad = None

    @torch.no_grad()
    def publish(self) -> None:
        """Round the masters into the model's low-precision parameters."""
        torch._foreach_copy_(self.params, self.masters)

    def full_precision(self, model_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``model_state`` (the model's state dict) with the fp32 masters in place of the bf16 weights."""
        return {**model_state, **{name: master.detach() for name, master in zip(self.names, self.masters)}}

    @torch.no_grad()
    def load(self, model_state: Mapping[str, torch.Tensor]) -> None:
        """Set the masters from a full-precision model state (a checkpoint's), then the parameters from them."""
        for name, master in zip(self.names, self.masters):
            if name in model_state:
                master.copy_(model_state[name])
        self.publish()

    @torch.no_grad()
    def release(self) -> None:
        """Give the model its fp32 weights back (the masters' values), e.g. when training is over."""
        for param, master in zip(self.params, self.masters):
            param.data = master.detach()
