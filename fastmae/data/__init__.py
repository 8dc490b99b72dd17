"""The fastmae data layer: MAE-augmented training batches from an ImageFolder tree or a file list.

    loader = build_loader("/data/imagenet", batch_size=256, backend="dali", device="cuda",
                          rank=rank, world_size=world, seed=0)
    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch, start_step=step if epoch == start_epoch else 0)
        for images, labels in loader: ...

Importing this package is cheap: DALI, PIL and the DataLoader machinery load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "build_loader", "make_dataset"]

if TYPE_CHECKING:
    from fastmae.data.loader import build_loader
    from fastmae.data.synthetic import make_dataset

_LAZY = {"build_loader": "fastmae.data.loader", "make_dataset": "fastmae.data.synthetic"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastmae.data' has no attribute {name!r}")
