"""Small image builders shared by the data tests (not a test module: no test functions)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from fastmae.data.synthetic import encode_jpeg, synthetic_image


def write_bad_files(folder: Path) -> dict[str, Path]:
    """One file of each awkward kind in ``folder/class_00``; returns kind -> path."""
    target = folder / "class_00"
    target.mkdir(parents=True, exist_ok=True)
    pixels = synthetic_image(7, 0, (90, 120))
    jpeg = encode_jpeg(pixels)
    paths = {
        kind: target / f"{kind}.JPEG"
        for kind in ("ok", "gray", "cmyk", "png", "cut", "closed_cut", "corrupt", "empty")
    }
    paths["ok"].write_bytes(jpeg)
    Image.fromarray(pixels).convert("L").save(paths["gray"], format="JPEG", quality=90)
    Image.fromarray(pixels).convert("CMYK").save(paths["cmyk"], format="JPEG", quality=90)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    paths["png"].write_bytes(buffer.getvalue())
    paths["cut"].write_bytes(jpeg[: len(jpeg) // 2])  # a download cut short: no end marker
    paths["closed_cut"].write_bytes(jpeg[: len(jpeg) // 2] + b"\xff\xd9")  # cut, then an end marker
    paths["corrupt"].write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 50)
    paths["empty"].write_bytes(b"")
    return paths


def coordinate_png(side: int = 256) -> bytes:
    """A PNG whose red channel is the column index and green the row index (lossless, side <= 256)."""
    ramp = np.arange(side, dtype=np.uint8)
    pixels = np.empty((side, side, 3), np.uint8)
    pixels[..., 0] = ramp[None, :]
    pixels[..., 1] = ramp[:, None]
    pixels[..., 2] = 128
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
