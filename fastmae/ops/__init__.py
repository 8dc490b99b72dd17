"""fastmae's fused masked-image-modeling ops.

``_EXPORTS`` is the export table: each public name and the submodule that defines it. The names load lazily
(module ``__getattr__``): registering a ``triton_op`` imports triton, so ``import fastmae.ops`` must not
import the op modules; ``from fastmae.ops import patchify_gather`` loads that op's module (and triton) only
then. Type checkers and editors read the typed re-exports of ``__init__.pyi`` instead, which
``tests/test_package.py`` keeps equal to this table.

Module names differ from the names they export (``gather.py`` defines ``patchify_gather``):
importing a submodule sets a package attribute of the module's name, which would otherwise
shadow the function of the same name.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "mask_token_blend": "blend",
    "patchify_gather": "gather",
    "masked_mse_loss": "loss",
    "removed_ids": "loss",
    "block_masking": "mask_generators",
    "grid_masking": "mask_generators",
    "tube_masking": "mask_generators",
    "MaskingResult": "masking",
    "random_masking": "masking",
    "patchify": "patches",
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
