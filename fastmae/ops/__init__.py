"""fastmae's fused masked-image-modeling ops.

Module names differ from the names they export (``gather.py`` defines ``patchify_gather``):
importing a submodule sets a package attribute of the module's name, which would otherwise
shadow the function of the same name.

Imported lazily: ``from fastmae.ops import patchify_gather`` loads that op's module (and
triton) only then, so ``import fastmae.ops`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module under fastmae.ops that defines it
_EXPORTS: dict[str, str] = {
    "MaskingResult": "masking",
    "random_masking": "masking",
    "patchify": "patchify",
    "unpatchify": "patchify",
    "patchify_gather": "gather",
    "unshuffle_with_mask_token": "unshuffle",
    "masked_mse_loss": "loss",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'fastmae.ops' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fastmae.ops.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
