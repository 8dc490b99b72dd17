"""fastmae's fast MAE models: ``MaskedAutoencoderViT``, factories by official name or short alias,
and official-checkpoint loading. State dicts are interchangeable with :mod:`fastmae.reference`.

Imported lazily: ``import fastmae.models.configs`` (the registry, which the reference reads) does
not load the model or its ops. One factory per name of :data:`fastmae.models.configs.MODEL_NAMES`
(``fastmae.models.mae_vit_base_patch16(...)``) comes from that registry.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fastmae.models.configs import MODEL_NAMES

if TYPE_CHECKING:  # what editors and type checkers see of the lazy names below
    from fastmae.models.attention import ATTN_BACKENDS as ATTN_BACKENDS
    from fastmae.models.factory import CheckpointLoad as CheckpointLoad
    from fastmae.models.factory import create_model as create_model
    from fastmae.models.factory import list_models as list_models
    from fastmae.models.factory import load_official_checkpoint as load_official_checkpoint
    from fastmae.models.mae import MaskedAutoencoderViT as MaskedAutoencoderViT

# public name -> module under fastmae.models that defines it
_EXPORTS: dict[str, str] = {
    "ATTN_BACKENDS": "attention",
    "CheckpointLoad": "factory",
    "MaskedAutoencoderViT": "mae",
    "create_model": "factory",
    "list_models": "factory",
    "load_official_checkpoint": "factory",
}

__all__ = sorted([*_EXPORTS, *MODEL_NAMES])


def __getattr__(name: str) -> Any:
    if name in MODEL_NAMES:
        value = importlib.import_module("fastmae.models.factory").FACTORIES[name]
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(f"fastmae.models.{_EXPORTS[name]}"), name)
    else:
        raise AttributeError(f"module 'fastmae.models' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
