"""Model factories (official names and short aliases) and official-checkpoint loading."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch

from fastmae.models.configs import MODEL_NAMES, model_config, named_factory
from fastmae.models.mae import MaskedAutoencoderViT


def list_models() -> list[str]:
    """Every accepted model name: official names and short aliases."""
    return list(MODEL_NAMES)


def create_model(name: str, **overrides: object) -> MaskedAutoencoderViT:
    """Build a fast MAE by official or short name; keyword arguments override its configuration
    (e.g. ``attn_backend="xformers"``, ``norm_pix_loss=True``, ``img_size=(160, 224)``)."""
    return MaskedAutoencoderViT(**model_config(name, **overrides))  # type: ignore[arg-type]


# one factory per registry name (``fastmae.models.mae_vit_base_patch16()`` and so on)
FACTORIES: dict[str, Callable[..., MaskedAutoencoderViT]] = {
    name: named_factory(create_model, name, "Fast") for name in MODEL_NAMES
}


class CheckpointLoad(NamedTuple):
    """What :func:`load_official_checkpoint` loaded: ``encoder_only`` files leave ``missing_keys`` (the decoder)."""

    encoder_only: bool
    missing_keys: list[str]


def _read_state_dict(path_or_dict: str | os.PathLike | Mapping[str, object]) -> Mapping[str, torch.Tensor]:
    if isinstance(path_or_dict, (str, os.PathLike)):
        # official files pickle an argparse.Namespace ('args'): allow just that class, keep weights_only
        with torch.serialization.safe_globals([argparse.Namespace]):
            loaded = torch.load(path_or_dict, map_location="cpu", weights_only=True)
    elif isinstance(path_or_dict, Mapping):
        loaded = path_or_dict
    else:
        raise TypeError(f"path_or_dict must be a file path or a (state) dict, got {type(path_or_dict).__name__}")
    state = loaded.get("model", loaded) if isinstance(loaded, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("checkpoint must be a state dict or a dict holding one under 'model'")
    return state


def load_official_checkpoint(
    model: MaskedAutoencoderViT, path_or_dict: str | os.PathLike | Mapping[str, object]
) -> CheckpointLoad:
    """Load an official MAE checkpoint (or a fastmae/reference state dict) into ``model``.

    Accepts a file path or a dict, either a state dict or ``{'model': state_dict, ...}``.
    A full checkpoint (``*_full.pth``, ``mae_visualize_*.pth``) loads with ``strict=True``. An
    encoder-only one (``mae_pretrain_vit_*.pth``) must hold every encoder key; the decoder keeps its
    weights and its keys are reported in ``missing_keys``. Unknown keys or wrong shapes raise.
    Positional tables made for another input size are rebuilt for the model's patch grid
    (:func:`fastmae.models.pos_embed.adapt_pos_embeds`).
    """
    from fastmae.models.pos_embed import adapt_pos_embeds

    state = adapt_pos_embeds(_read_state_dict(path_or_dict), model)
    encoder_keys = set(model.encoder_state_dict())
    encoder_only = set(state) <= encoder_keys
    if not encoder_only:
        model.load_state_dict(state, strict=True)
        return CheckpointLoad(False, [])
    absent = sorted(encoder_keys - set(state))
    if absent:
        raise ValueError(f"encoder-only checkpoint lacks encoder keys: {', '.join(absent[:8])}")
    result = model.load_state_dict(state, strict=False)
    return CheckpointLoad(True, list(result.missing_keys))
