"""How the trainer builds, unwraps and names the parts of a model (``fastmae.models`` underneath)."""

from __future__ import annotations

from torch import nn

from fastmae.models import MaskedAutoencoderViT, create_model
from fastmae.models.configs import full_model_config


def build_model(name: str, *, attn_backend: str = "auto", norm_pix_loss: bool = False,
                img_size: int | None = None) -> MaskedAutoencoderViT:
    """A fresh MAE by official or short name; ``img_size`` None keeps the model's own."""
    overrides: dict[str, object] = {"attn_backend": attn_backend, "norm_pix_loss": norm_pix_loss}
    if img_size is not None:
        overrides["img_size"] = img_size
    return create_model(name, **overrides)


def default_img_size(name: str) -> int:
    """The input size a named model is built for (224 for the official ones)."""
    size = full_model_config(name)["img_size"]
    return size if isinstance(size, int) else int(size[0])


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
    """Encoder and decoder blocks: the units FSDP shards."""
    return [*model.blocks, *model.decoder_blocks]
