"""How the trainer builds, wraps and (re)loads models.

``create_model`` is the trainer's single entry point to the model zoo: it uses
``fastmae.models.create_model`` when that package is present and otherwise the reference
model of ``fastmae.reference`` (same parameter names and forward contract).
"""

from __future__ import annotations

import torch
from torch import nn

from fastmae.reference import MODEL_ALIASES, MODEL_CONFIGS, Block, resolve_model_name


def create_model(name: str, *, attn_backend: str = "auto", norm_pix_loss: bool = False,
                 img_size: int | None = None) -> nn.Module:
    """A fresh MAE by official or short name; ``img_size`` None keeps the model's own."""
    overrides: dict[str, object] = {"norm_pix_loss": norm_pix_loss}
    if img_size is not None:
        overrides["img_size"] = img_size
    try:
        from fastmae.models import create_model as create_fast_model
    except ImportError:  # fastmae.models not installed yet: the reference model has the same contract
        from fastmae.reference import create_reference_model
    else:
        return create_fast_model(name, attn_backend=attn_backend, **overrides)

    # the reference knows two kernels; "auto"/"xformers" map to SDPA there
    return create_reference_model(name, attn_impl="math" if attn_backend == "math" else "sdpa", **overrides)


def default_img_size(name: str) -> int:
    """The input size a named model is built for (224 for the official ones)."""
    size = MODEL_CONFIGS[resolve_model_name(name)].get("img_size", 224)
    return int(size)


def enable_grad_checkpointing(model: nn.Module) -> None:
    """Recompute every transformer block's activations in backward."""
    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    apply_activation_checkpointing(model, check_fn=lambda module: isinstance(module, Block))


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """Encoder and decoder blocks: the units FSDP shards and checkpointing recomputes."""
    return [*model.blocks, *model.decoder_blocks]


def load_pretrained_state(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Load a full or encoder-only state dict (official or ours); return (missing, unexpected) keys.

    Frozen pos embeds are recomputed by the model, so a missing ``decoder_pos_embed`` is harmless;
    a shape mismatch raises.
    """
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(f"checkpoint tensor {key!r} has shape {tuple(value.shape)}, the model expects "
                             f"{tuple(own[key].shape)} (wrong --model or --input_size?)")
    result = model.load_state_dict(state, strict=False)
    return list(result.missing_keys), list(result.unexpected_keys)


def encoder_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's tensors only (what the official ``mae_pretrain_vit_*.pth`` files hold)."""
    if hasattr(model, "encoder_state_dict"):
        return model.encoder_state_dict()
    decoder_prefixes = ("decoder_", "mask_token")
    return {k: v for k, v in model.state_dict().items() if not k.startswith(decoder_prefixes)}


KNOWN_MODELS = sorted([*MODEL_CONFIGS, *MODEL_ALIASES])
