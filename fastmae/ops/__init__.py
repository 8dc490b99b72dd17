"""fastmae's fused masked-image-modeling ops.

The export table is the ``TYPE_CHECKING`` block below: real ``from .module import name`` imports that
editors and type checkers read, and the only list of what ``fastmae.ops`` exports. At run time the
names load lazily from it: registering a ``triton_op`` imports triton, so ``import fastmae.ops`` must not
import the op modules; ``from fastmae.ops import patchify_gather`` loads that op's module (and triton)
only then.

Module names differ from the names they export (``gather.py`` defines ``patchify_gather``):
importing a submodule sets a package attribute of the module's name, which would otherwise
shadow the function of the same name.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the export table (see the module docstring)
    from .blend import mask_token_blend as mask_token_blend
    from .gather import patchify_gather as patchify_gather
    from .loss import masked_mse_loss as masked_mse_loss
    from .loss import removed_ids as removed_ids
    from .mask_generators import block_masking as block_masking
    from .mask_generators import grid_masking as grid_masking
    from .mask_generators import tube_masking as tube_masking
    from .masking import MaskingResult as MaskingResult
    from .masking import random_masking as random_masking
    from .patches import patchify as patchify
    from .patches import unpatchify as unpatchify
    from .unshuffle import unshuffle_with_mask_token as unshuffle_with_mask_token


def _read_exports() -> dict[str, str]:
    """Public name -> submodule, from the imports of this file's ``if TYPE_CHECKING:`` block."""
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    return {
        alias.asname or alias.name: node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    }


_EXPORTS = _read_exports()
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
