"""The embedded default dataset: synthetic photo-like JPEGs in ImageFolder layout.

Each image is a 1/f ("pink") noise background, which has the power spectrum of natural
photographs, overlaid with a few smooth-shaded shapes (ellipses, rectangles, polygons)
that give hard edges and occlusions, then lightly textured with more 1/f noise. The
result compresses and decodes like a real photo (sizes and JPEG file sizes close to
ImageNet's), unlike white noise which neither compresses nor has any structure for a
masked autoencoder to learn. Generation is deterministic for ``(seed, index)``.

The labelled variant (:func:`make_labelled_dataset`, ``--labelled``) draws every shape of an image
with one kind, which is the image's class (``ellipse``, ``rectangle``, ``triangle``), and writes a
held-out ``val`` split beside ``train``: a task a linear probe can measure what an encoder learned on.

    python -m fastmae make-dataset OUT --num-images 2000 --image-size 96 160
    python -m fastmae make-dataset OUT --labelled --num-images 2000 --num-val 500
"""

from __future__ import annotations

import argparse
import io
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

IMAGENET_LIKE_SIZE = (350, 500)
SHAPE_KINDS = ("ellipse", "rectangle", "triangle")  # the classes of the labelled dataset, in label order


def _pink_noise(
    rng: np.random.Generator, height: int, width: int, channels: int, exponent: float
) -> np.ndarray:
    """(H, W, C) noise with power ~ 1/f**exponent, each channel scaled to zero mean, unit std."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    radius[0, 0] = 1.0  # the DC term is removed below
    amplitude = radius ** (-exponent / 2.0)
    amplitude[0, 0] = 0.0
    spectrum = rng.standard_normal((channels, height, fx.shape[1])) + 1j * rng.standard_normal(
        (channels, height, fx.shape[1])
    )
    field = np.fft.irfft2(spectrum * amplitude, s=(height, width), axes=(1, 2))
    field /= field.std(axis=(1, 2), keepdims=True) + 1e-12
    return field.transpose(1, 2, 0)


def _shape_layer(rng: np.random.Generator, height: int, width: int, kind: int | None = None):
    """A few filled shapes with random colours, as (colour image, coverage mask) via PIL.

    ``kind`` (an index into SHAPE_KINDS) fixes the kind of every shape, and draws fewer, larger ones
    (1-3, radii 15-40% of the side; polygons are triangles) so the kind is visible at low resolution;
    None draws 2-6 shapes of any kind, polygons with 3-7 vertices.
    """
    from PIL import Image, ImageDraw

    colours = Image.new("RGB", (width, height))
    mask = Image.new("L", (width, height), 0)
    draw_c, draw_m = ImageDraw.Draw(colours), ImageDraw.Draw(mask)
    count_range, radius_range = ((2, 7), (0.05, 0.35)) if kind is None else ((1, 4), (0.15, 0.4))
    for _ in range(int(rng.integers(*count_range))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(*radius_range) * width, rng.uniform(*radius_range) * height
        drawn = rng.integers(0, len(SHAPE_KINDS))  # drawn either way: the same stream for both variants
        shape = drawn if kind is None else kind
        if shape == 0:
            box = (cx - rx, cy - ry, cx + rx, cy + ry)
            draw_c.ellipse(box, fill=colour)
            draw_m.ellipse(box, fill=255)
        elif shape == 1:
            box = (cx - rx, cy - ry, cx + rx, cy + ry)
            draw_c.rectangle(box, fill=colour)
            draw_m.rectangle(box, fill=255)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, 3 if kind is not None else int(rng.integers(3, 8))))
            points = [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in angles]
            draw_c.polygon(points, fill=colour)
            draw_m.polygon(points, fill=255)
    return np.asarray(colours, dtype=np.float32), np.asarray(mask, dtype=np.float32)[..., None] / 255.0


def synthetic_image(seed: int, index: int, image_size: tuple[int, int] = IMAGENET_LIKE_SIZE,
                    kind: int | None = None) -> np.ndarray:
    """One (H, W, 3) uint8 photo-like image; H and W drawn independently from ``image_size`` (min, max).

    ``kind``: every shape of that SHAPE_KINDS index (the labelled dataset), or None for mixed shapes.
    """
    rng = np.random.default_rng([seed, index])
    low, high = image_size
    height, width = (int(v) for v in rng.integers(low, high + 1, 2))
    base_colour = rng.uniform(40, 215, 3)
    background = base_colour + 45.0 * _pink_noise(rng, height, width, 3, exponent=2.4)
    shapes, coverage = _shape_layer(rng, height, width, kind)
    image = background * (1.0 - coverage) + shapes * coverage
    # texture and shading on everything, shapes included, so no region is flat
    image += 14.0 * _pink_noise(rng, height, width, 1, exponent=1.6)
    return np.clip(image, 0, 255).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# (path, seed, index, image_size, quality, shape kind or None)
_Job = tuple[str, int, int, tuple[int, int], int, "int | None"]


def _write_one(job: _Job) -> None:
    path, seed, index, image_size, quality, kind = job
    Path(path).write_bytes(encode_jpeg(synthetic_image(seed, index, image_size, kind), quality))


def _write_all(jobs: list[_Job], workers: int) -> None:
    for folder in sorted({str(Path(job[0]).parent) for job in jobs}):
        Path(folder).mkdir(parents=True, exist_ok=True)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_one, jobs, chunksize=32))
    else:
        for job in jobs:
            _write_one(job)


def _check_options(num_images: int, image_size: int | tuple[int, int], quality: int) -> tuple[int, int]:
    """Validate the options both dataset writers share; return image_size as a (min, max) pair."""
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be a positive int, got {num_images!r}")
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    if (
        not isinstance(image_size, Sequence)
        or len(image_size) != 2
        or not all(isinstance(v, int) and v >= 8 for v in image_size)
        or image_size[0] > image_size[1]
    ):
        raise ValueError(
            f"image_size must be an int >= 8 or a (min, max) pair with 8 <= min <= max, got {image_size!r}"
        )
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in [1, 100], got {quality}")
    return (int(image_size[0]), int(image_size[1]))


def make_dataset(
    root: str | os.PathLike,
    num_images: int = 1000,
    seed: int = 0,
    *,
    num_classes: int = 10,
    image_size: int | tuple[int, int] = IMAGENET_LIKE_SIZE,
    quality: int = 90,
    split: str = "train",
    workers: int = 1,
) -> Path:
    """Write ``num_images`` JPEGs to ``root/<split>/class_XX/img_XXXXXXX.JPEG``; return ``root/<split>``.

    ``image_size``: (min, max) side length in pixels (each side drawn independently), or an int for
    square images of exactly that side. The default (350, 500) is ImageNet-like (~100 KB per image at
    quality 90); the CPU demo uses e.g. (96, 160), which is ~15x faster to write and to decode.
    Files are identical for the same (seed, index, image_size, quality); image i is in class
    i % num_classes.
    """
    image_size = _check_options(num_images, image_size, quality)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    split_dir = Path(root) / split
    for class_index in range(num_classes):  # every class folder exists, even with fewer images than classes
        (split_dir / f"class_{class_index:02d}").mkdir(parents=True, exist_ok=True)
    jobs = [(str(split_dir / f"class_{index % num_classes:02d}" / f"img_{index:07d}.JPEG"), seed, index,
             image_size, quality, None) for index in range(num_images)]
    _write_all(jobs, workers)
    return split_dir


def make_labelled_dataset(
    root: str | os.PathLike,
    num_images: int = 1000,
    num_val: int = 300,
    seed: int = 0,
    *,
    image_size: int | tuple[int, int] = IMAGENET_LIKE_SIZE,
    quality: int = 90,
    workers: int = 1,
) -> Path:
    """Write the labelled dataset: ``root/{train,val}/<kind>/img_XXXXXXX.JPEG``; return ``root``.

    Image i (train: i < num_images, val: the next num_val indices, so no image is in both) has
    every shape of kind ``SHAPE_KINDS[i % 3]``, its class; its folder is named after the kind.
    Otherwise the images are drawn like :func:`make_dataset`'s (same options, same statistics).
    """
    image_size = _check_options(num_images, image_size, quality)
    if isinstance(num_val, bool) or not isinstance(num_val, int) or num_val < 1:
        raise ValueError(f"num_val must be a positive int, got {num_val!r}")
    root = Path(root)
    jobs = []
    for split, indices in (("train", range(num_images)), ("val", range(num_images, num_images + num_val))):
        for index in indices:
            kind = index % len(SHAPE_KINDS)
            path = root / split / SHAPE_KINDS[kind] / f"img_{index:07d}.JPEG"
            jobs.append((str(path), seed, index, image_size, quality, kind))
    _write_all(jobs, workers)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastmae make-dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="output folder; images go to ROOT/train/class_XX/")
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-classes", type=int, default=10, help="class folders (unlabelled variant)")
    parser.add_argument("--labelled", action="store_true",
                        help=f"class = the kind of shape drawn ({', '.join(SHAPE_KINDS)}); writes train/ and val/")
    parser.add_argument("--num-val", type=int, default=300, help="held-out images of --labelled (ROOT/val)")
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=IMAGENET_LIKE_SIZE,
        help="side length range in pixels (default: ImageNet-like 350 500)",
    )
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if args.labelled:
        out = make_labelled_dataset(args.root, args.num_images, args.num_val, args.seed,
                                    image_size=tuple(args.image_size), quality=args.quality, workers=args.workers)
        print(f"wrote {args.num_images} train and {args.num_val} val images ({', '.join(SHAPE_KINDS)}) to {out}")
        return 0
    out = make_dataset(
        args.root,
        args.num_images,
        args.seed,
        num_classes=args.num_classes,
        image_size=tuple(args.image_size),
        quality=args.quality,
        workers=args.workers,
    )
    print(f"wrote {args.num_images} images to {out}")
    return 0
