"""The model registry: every MAE size by name, the constructor defaults and the numerical constants.

Plain data and small functions, no torch modules: the fast model (:mod:`fastmae.models`), the
trainer, the benchmarks and the test oracle (:mod:`fastmae.reference`) all read their sizes here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

LAYER_NORM_EPS = 1e-6  # every LayerNorm of the official model (timm's default of 1e-5 is not used)
NORM_PIX_EPS = 1e-6  # per-patch normalised targets: (x - mean) / sqrt(var + eps)

# The official constructor's defaults (an MAE ViT-L/16); a named size overrides some of them.
MAE_DEFAULTS: dict[str, Any] = dict(
    img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24, num_heads=16,
    decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0, norm_pix_loss=False,
)

MODEL_CONFIGS: dict[str, dict[str, int]] = {
    "mae_vit_base_patch16_dec512d8b": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "mae_vit_large_patch16_dec512d8b": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "mae_vit_huge_patch14_dec512d8b": dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
    # small sizes for tests and the CPU demo (not official)
    "mae_vit_tiny_patch8_dec64d2b": dict(
        img_size=64, patch_size=8, embed_dim=96, depth=4, num_heads=3,
        decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4,
    ),
    "mae_vit_test_patch4": dict(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
        decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
    ),
}
MODEL_ALIASES: dict[str, str] = {
    "mae_vit_base_patch16": "mae_vit_base_patch16_dec512d8b",
    "mae_vit_large_patch16": "mae_vit_large_patch16_dec512d8b",
    "mae_vit_huge_patch14": "mae_vit_huge_patch14_dec512d8b",
    "mae_vit_tiny": "mae_vit_tiny_patch8_dec64d2b",
    "mae_vit_test": "mae_vit_test_patch4",
}
MODEL_NAMES: tuple[str, ...] = tuple(sorted([*MODEL_CONFIGS, *MODEL_ALIASES]))  # every accepted name


def resolve_model_name(name: str) -> str:
    """Official or short model name -> the official (canonical) name."""
    name = MODEL_ALIASES.get(name, name)
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    return name


def model_config(name: str, **overrides: object) -> dict[str, object]:
    """The constructor keyword arguments of a named model (what differs from the defaults), with overrides."""
    config: dict[str, object] = dict(MODEL_CONFIGS[resolve_model_name(name)])
    config.update(overrides)
    return config


def full_model_config(name: str, **overrides: object) -> dict[str, Any]:
    """Every architecture argument of a named model: its config over :data:`MAE_DEFAULTS`."""
    return {**MAE_DEFAULTS, **model_config(name, **overrides)}


Model = TypeVar("Model")


def named_factory(create: Callable[..., Model], name: str, description: str) -> Callable[..., Model]:
    """A factory function called ``name`` that builds ``create(name, **overrides)``."""

    def build(**overrides: object) -> Model:
        return create(name, **overrides)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{description} ``{name}`` (keyword arguments override its configuration)."
    return build
