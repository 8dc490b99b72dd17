"""Which files a loader reads: ImageFolder trees, file lists, and the per-epoch order.

Both backends take their per-step file order from :func:`epoch_order`, so for the same
``(seed, epoch, rank, world_size)`` the DALI and torch loaders read the same files in the
same batches, and a run resumed at step k reads exactly the batches k, k+1, ... of the
uninterrupted run.
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")


@dataclass(frozen=True)
class FileSet:
    """Absolute image paths and their integer class labels (ImageFolder: sorted class folders)."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)


def image_folder(root: str | os.PathLike) -> FileSet:
    """Every image under ``root/<class>/...`` (any depth below the class folder), in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data_path: {root} is not a directory")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise ValueError(
            f"data_path: {root} has no class sub-folders (ImageFolder layout: root/<class>/<image>)"
        )
    paths: list[str] = []
    labels: list[int] = []
    skipped: list[str] = []
    for label, name in enumerate(classes):
        for folder, _, names in sorted(os.walk(root / name)):
            entries = {entry.name: entry for entry in os.scandir(folder)}  # file kinds from readdir, no stat
            for file_name in sorted(names):
                if file_name.lower().endswith(IMAGE_EXTENSIONS):
                    entry = entries.get(file_name)
                    path = os.path.join(folder, file_name)
                    if entry is None or not entry.is_file():
                        skipped.append(path)
                        continue
                    paths.append(path)
                    labels.append(label)
    _warn_skipped(skipped, f"data_path {root}")
    if not paths:
        raise ValueError(f"data_path: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return FileSet(tuple(paths), tuple(labels))


def read_file_list(list_path: str | os.PathLike) -> FileSet:
    """Read a file list: one ``<path> <label>`` per line; relative paths are relative to the list's folder.

    Blank lines and lines starting with ``#`` are skipped; a path may contain spaces (the label
    is the last field).
    """
    list_path = Path(list_path)
    if not list_path.is_file():
        raise ValueError(f"file_list: {list_path} is not a file")
    base = list_path.parent
    paths: list[str] = []
    labels: list[int] = []
    for line_number, line in enumerate(list_path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path, _, label = line.rpartition(" ")
        if not path or not label.lstrip("-").isdigit():
            raise ValueError(f"file_list: {list_path}:{line_number}: expected '<path> <label>', got {line!r}")
        paths.append(str(base / path) if not os.path.isabs(path) else path)
        labels.append(int(label))
    regular = [i for i, path in enumerate(paths) if not_regular(path) is None]
    _warn_skipped([p for i, p in enumerate(paths) if i not in set(regular)], f"file_list {list_path}")
    paths, labels = [paths[i] for i in regular], [labels[i] for i in regular]
    if not paths:
        raise ValueError(f"file_list: {list_path} lists no files")
    return FileSet(tuple(paths), tuple(labels))


def not_regular(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it exists but is not a regular file ('FIFO', 'socket', ...), else None.

    Opening a FIFO for reading blocks until a writer appears, so nothing here opens such a path.
    A missing path is None: the decoder's error names it.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory"),
             (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))
    return next((kind for test, kind in kinds if test(mode)), "special file")


def _warn_skipped(skipped: list[str], where: str) -> None:
    if skipped:
        shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        warnings.warn(f"{where}: skipped {len(skipped)} path(s) that are not a regular file (FIFO, socket, "
                      f"device or broken link; never opened): {shown}", UserWarning, stacklevel=3)


def write_file_list(list_path: str | os.PathLike, files: FileSet) -> None:
    """Write ``files`` in the :func:`read_file_list` format, paths relative to the list's folder."""
    list_path = Path(list_path)
    base = list_path.resolve().parent
    lines = []
    for path, label in zip(files.paths, files.labels):
        absolute = Path(path).resolve()
        try:
            shown = absolute.relative_to(base)
        except ValueError:
            shown = absolute
        lines.append(f"{shown} {label}\n")
    list_path.write_text("".join(lines))


def _path_key(path: str | os.PathLike) -> str:
    """How two spellings of one file compare: absolute and normalised (no file-system calls)."""
    return os.path.normpath(os.path.abspath(path))


def read_skip_list(list_path: str | os.PathLike) -> frozenset[str]:
    """Paths to leave out: one per line (a file list's ``<path> <label>`` lines work too: a last field
    that is an integer is dropped); relative paths are relative to the list's folder; ``#`` comments."""
    list_path = Path(list_path)
    if not list_path.is_file():
        raise ValueError(f"skip_list: {list_path} is not a file")
    base = list_path.parent
    skipped = set()
    for line in list_path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path, _, last = line.rpartition(" ")
        if not (path and last.lstrip("-").isdigit()):
            path = line
        skipped.add(_path_key(path if os.path.isabs(path) else base / path))
    return frozenset(skipped)


def without(files: FileSet, skipped: frozenset[str]) -> FileSet:
    """``files`` minus the paths in ``skipped`` (as :func:`read_skip_list` returns them)."""
    kept = [i for i, path in enumerate(files.paths) if _path_key(path) not in skipped]
    if not kept:
        raise ValueError(f"skip_list: it leaves out all {len(files)} files")
    return FileSet(tuple(files.paths[i] for i in kept), tuple(files.labels[i] for i in kept))


def resolve_files(
    data_path: str | os.PathLike | None,
    file_list: str | os.PathLike | None,
    skip_list: str | os.PathLike | None = None,
) -> FileSet:
    """The training files: ``file_list`` if given, else ``data_path/train`` (or ``data_path`` itself),
    less the paths named in ``skip_list``."""
    if file_list is not None:
        files = read_file_list(file_list)
    elif data_path is None:
        raise ValueError("data_path: give a dataset folder or a file_list")
    else:
        root = Path(data_path)
        files = image_folder(root / "train" if (root / "train").is_dir() else root)
    return files if skip_list is None else without(files, read_skip_list(skip_list))


def steps_per_epoch(num_files: int, batch_size: int, world_size: int) -> int:
    """Full batches per rank and epoch; the remainder (< batch_size * world_size files) is dropped."""
    steps = num_files // (batch_size * world_size)
    if steps == 0:
        raise ValueError(
            f"batch_size: {num_files} files cannot fill one batch of {batch_size} on each of "
            f"{world_size} rank(s)"
        )
    return steps


def epoch_order(
    num_files: int, batch_size: int, *, seed: int, epoch: int, rank: int, world_size: int
) -> np.ndarray:
    """(steps, batch_size) file indices this rank reads in ``epoch``.

    One permutation of all files per (seed, epoch), shared by every rank; global batch g of the
    epoch is the slice [g*B*world, (g+1)*B*world) of it, and rank r takes its r-th B-sized part.
    Together the ranks read every file at most once; the dropped remainder changes every epoch.
    """
    steps = steps_per_epoch(num_files, batch_size, world_size)
    permutation = np.random.default_rng([seed, epoch]).permutation(num_files)
    used = permutation[: steps * batch_size * world_size].reshape(steps, world_size, batch_size)
    return np.ascontiguousarray(used[:, rank, :])
