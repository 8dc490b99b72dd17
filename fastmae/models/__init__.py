"""fastmae's fast MAE models: ``MaskedAutoencoderViT``, factories by official name or short alias,
and official-checkpoint loading. State dicts are interchangeable with :mod:`fastmae.reference`."""

from fastmae.models.attention import ATTN_BACKENDS
from fastmae.models.factory import (
    CheckpointLoad,
    create_model,
    list_models,
    load_official_checkpoint,
    mae_vit_base_patch16,
    mae_vit_base_patch16_dec512d8b,
    mae_vit_huge_patch14,
    mae_vit_huge_patch14_dec512d8b,
    mae_vit_large_patch16,
    mae_vit_large_patch16_dec512d8b,
    mae_vit_test,
    mae_vit_test_patch4,
    mae_vit_tiny,
    mae_vit_tiny_patch8_dec64d2b,
)
from fastmae.models.mae import MaskedAutoencoderViT

__all__ = [
    "ATTN_BACKENDS",
    "CheckpointLoad",
    "MaskedAutoencoderViT",
    "create_model",
    "list_models",
    "load_official_checkpoint",
    "mae_vit_base_patch16",
    "mae_vit_base_patch16_dec512d8b",
    "mae_vit_huge_patch14",
    "mae_vit_huge_patch14_dec512d8b",
    "mae_vit_large_patch16",
    "mae_vit_large_patch16_dec512d8b",
    "mae_vit_test",
    "mae_vit_test_patch4",
    "mae_vit_tiny",
    "mae_vit_tiny_patch8_dec64d2b",
]
