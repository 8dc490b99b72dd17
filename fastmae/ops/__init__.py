"""fastmae's fused masked-image-modeling ops.

``_EXPORTS`` is the export table: each public name and the submodule that defines it. The names load lazily
(module ``__getattr__``): registering a ``triton_op`` imports triton, so ``import fastmae.ops`` must not
import the op modules; ``from fastmae.ops import patchify_gather`` loads that op's module (and triton) only
then. Editors and type checkers read the typed re-exports of the ``TYPE_CHECKING`` block, which
``tests/test_package.py`` keeps equal to the table (as for :mod:`fastmae.models`).

Module names differ from the names they export (``gather.py`` defines ``patchify_gather``):
importing a submodule sets a package attribute of the module's name, which would otherwise
shadow the function of the same name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what editors and type checkers see of the lazy names below
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

# public name -> module under fastmae.ops that defines it
_EXPORTS: dict[str, str] = {
    "MaskingResult": "masking",
    "block_masking": "mask_generators",
    "grid_masking": "mask_generators",
    "mask_token_blend": "blend",
    "masked_mse_loss": "loss",
    "patchify": "patches",
    "patchify_gather": "gather",
    "random_masking": "masking",
    "removed_ids": "loss",
    "tube_masking": "mask_generators",
    "unpatchify": "patches",
    "unshuffle_with_mask_token": "unshuffle",
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
