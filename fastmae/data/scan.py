"""``fastmae scan-dataset PATH``: check every image, report, write a file list without the bad ones.

The fast check reads each file's header with PIL (format, size, colour mode) and checks that a
JPEG's marker stream reaches its end-of-image marker (bytes after it are fine; a PNG must end
with its IEND chunk), which catches truncated
files without decoding them. ``--full-decode`` also decodes every pixel. Files the loaders
handle (grayscale, CMYK, PNG data named .JPEG, ...) are kept and counted as notes; unreadable,
non-image, truncated and (with --full-decode) undecodable files are left out of the list.
Exit status: 0 when every file is usable, 1 when some were left out (the list is written anyway).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from fastmae.data.files import FileSet, not_regular, resolve_files, write_file_list

JPEG_EXTENSIONS = (".jpg", ".jpeg")
GRAY_FILL_ROWS = 8


@dataclass(frozen=True)
class ImageCheck:
    """problem: why the file is unusable (None when usable); note: something the loaders convert."""

    path: str
    problem: str | None = None
    note: str | None = None


def _jpeg_reaches_end(data: bytes) -> bool:
    """Whether the JPEG stream reaches its end-of-image marker; bytes after it (camera trailers,
    padding) are allowed, as decoders ignore them.

    Walks the markers: segments are skipped by their length (so an EXIF thumbnail's own end marker
    does not count); in entropy-coded data 0xFF is followed by 0x00 (stuffing) or a restart marker,
    so the first other 0xFF xx there is the next real marker.
    """
    pos, size = 2, len(data)
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= size:
            return False
        marker = data[pos + 1]
        if marker == 0xD9:
            return True
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD8:  # stuffing, TEM, RSTn, SOI: no length
            pos += 2
        else:  # a segment: 2-byte big-endian length that counts itself
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")


def _end_marker_problem(data: bytes, image_format: str) -> str | None:
    if image_format == "JPEG" and not _jpeg_reaches_end(data):
        return "truncated: no JPEG end-of-image marker"
    tail = data.rstrip(b"\x00")  # some writers pad after the end marker
    if image_format == "PNG" and b"IEND" not in tail[-16:]:
        return "truncated: no PNG IEND chunk"
    return None


def _gray_fill_problem(image) -> str | None:
    """libjpeg (PIL and DALI's CPU decoder alike) fills data missing before an end marker with flat
    gray (128) instead of failing; a baseline JPEG cut and then closed shows as gray bottom rows."""
    import numpy as np

    bottom = np.asarray(image)[-GRAY_FILL_ROWS:]
    if image.height > GRAY_FILL_ROWS and (bottom == 128).all():
        return f"truncated: bottom {GRAY_FILL_ROWS}+ rows are decoder fill (flat gray 128)"
    return None


def check_image(path: str, full_decode: bool = False) -> ImageCheck:
    """Check one file; never raises for a bad file (the problem is in the result)."""
    from PIL import Image

    from fastmae.data.transforms import load_rgb

    kind = not_regular(path)
    if kind is not None:  # checked before any open: opening a FIFO blocks until a writer comes
        return ImageCheck(path, problem=f"not a regular file ({kind})")
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        return ImageCheck(path, problem=f"unreadable: {error.strerror or error}")
    if not data:
        return ImageCheck(path, problem="empty file")
    try:
        import io

        with Image.open(io.BytesIO(data)) as image:
            image_format, mode, size = image.format, image.mode, image.size
    except Exception as error:
        return ImageCheck(path, problem=f"not an image: {type(error).__name__}: {error}")
    if min(size) < 1:
        return ImageCheck(path, problem=f"empty image {size[0]}x{size[1]}")
    problem = _end_marker_problem(data, image_format)
    if problem is None and full_decode:
        try:
            problem = _gray_fill_problem(load_rgb(path))
        except OSError as error:
            problem = f"decode failed: {error.__cause__ or error}"
    notes = []
    if mode != "RGB":
        notes.append(f"mode {mode}")
    if path.lower().endswith(JPEG_EXTENSIONS) and image_format != "JPEG":
        notes.append(f"{image_format} data named {Path(path).suffix}")
    return ImageCheck(path, problem=problem, note=", ".join(notes) or None)


def _check_full(path: str) -> ImageCheck:
    return check_image(path, full_decode=True)


def _check_header(path: str) -> ImageCheck:
    return check_image(path, full_decode=False)


def scan_files(files: FileSet, *, full_decode: bool = False, workers: int = 1) -> list[ImageCheck]:
    """Check every file, in parallel processes when ``workers`` > 1; results in the order of ``files``."""
    check = _check_full if full_decode else _check_header
    if workers <= 1:
        return [check(path) for path in files.paths]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(check, files.paths, chunksize=64))


def clean_files(files: FileSet, checks: Sequence[ImageCheck]) -> FileSet:
    kept = [i for i, result in enumerate(checks) if result.problem is None]
    return FileSet(tuple(files.paths[i] for i in kept), tuple(files.labels[i] for i in kept))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastmae scan-dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="dataset root (reads PATH/train if it exists) or an ImageFolder tree")
    parser.add_argument("--full-decode", action="store_true", help="decode every image fully (slower)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    parser.add_argument("--output", help="file list to write (default: PATH/clean_files.txt)")
    parser.add_argument("--report", help="also write every finding as JSON here")
    args = parser.parse_args(argv)

    files = resolve_files(args.path, None)
    checks = scan_files(files, full_decode=args.full_decode, workers=args.workers)
    clean = clean_files(files, checks)
    output = Path(args.output) if args.output else Path(args.path) / "clean_files.txt"
    write_file_list(output, clean)

    bad = [c for c in checks if c.problem is not None]
    noted = [c for c in checks if c.note is not None and c.problem is None]
    print(
        f"scanned {len(checks)} files ({'full decode' if args.full_decode else 'header check'}): "
        f"{len(clean)} usable, {len(bad)} left out, {len(noted)} usable with notes"
    )
    for kind, count in sorted(Counter(c.problem.split(":")[0] for c in bad).items()):
        print(f"  left out, {kind}: {count}")
    for kind, count in sorted(Counter(c.note for c in noted).items()):
        print(f"  converted by the loaders, {kind}: {count}")
    for c in bad:
        print(f"BAD {c.path}: {c.problem}", file=sys.stderr)
    print(f"wrote {output} ({len(clean)} files); use it with build_loader(file_list=...) or --file_list")
    if args.report:
        Path(args.report).write_text(json.dumps([asdict(c) for c in checks if c.problem or c.note], indent=1))
    return 1 if bad else 0
