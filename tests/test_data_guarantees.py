"""Data-layer guarantees: non-regular files never opened, no false 'truncated' verdict, every DALI
decode failure names its file (the first batch too)."""

from __future__ import annotations

import io
import os
import sys
import types

import numpy as np
import pytest
import torch

from fastmae.data import build_loader, make_dataset
from fastmae.data.files import FileSet, image_folder, read_file_list, write_file_list
from fastmae.data.scan import check_image
from fastmae.data.scan import main as scan_main
from fastmae.data.transforms import load_rgb

pytest.importorskip("PIL")


@pytest.fixture
def with_fifo(tmp_path):
    """8 good JPEGs and a named pipe called class_0/pipe.jpg (opening it for reading blocks forever)."""
    make_dataset(tmp_path, 8, seed=2, num_classes=1, image_size=40)
    folder = next(p for p in (tmp_path / "train").iterdir() if p.is_dir())
    fifo = folder / "pipe.jpg"
    os.mkfifo(fifo)
    return tmp_path, fifo


# ------------------------------------------------------------------ 6. FIFOs and other non-regular files
@pytest.mark.timeout(60)
def test_fifo_in_a_folder_is_skipped_with_a_warning_by_scan_and_loader(with_fifo, capsys):
    root, fifo = with_fifo
    with pytest.warns(UserWarning, match="pipe.jpg"):
        files = image_folder(root / "train")
    assert len(files) == 8 and str(fifo) not in files.paths
    with pytest.warns(UserWarning, match="not a regular file"):
        assert scan_main([str(root), "--workers", "1"]) == 0
    assert "scanned 8 files" in capsys.readouterr().out
    with pytest.warns(UserWarning, match="pipe.jpg"):
        loader = build_loader(root, 4, 16, backend="torch", device="cpu", num_workers=0)
    assert sum(images.shape[0] for images, _ in loader) == 8


@pytest.mark.timeout(60)
def test_fifo_in_a_file_list_or_given_directly_is_never_opened(with_fifo, tmp_path):
    root, fifo = with_fifo
    ok = next(p for p in (root / "train").rglob("*") if p.is_file())
    list_path = tmp_path / "list.txt"
    write_file_list(list_path, FileSet((str(ok), str(fifo)), (0, 0)))
    with pytest.warns(UserWarning, match="pipe.jpg"):
        assert read_file_list(list_path).paths == (str(ok),)
    assert check_image(str(fifo)).problem.startswith("not a regular file")
    with pytest.raises(OSError, match="not a regular file"):
        load_rgb(str(fifo))


# ------------------------------------------------------------------ 7. bytes after the end-of-image marker
def _jpeg(progressive: bool = False) -> tuple[bytes, np.ndarray]:
    from PIL import Image

    from fastmae.data.synthetic import synthetic_image

    pixels = synthetic_image(5, 0, (48, 64))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90, progressive=progressive)
    return buffer.getvalue(), pixels


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("trailer", [b"camera maker notes \x01\x02\x03" * 8, b"\xff\xd8 second image? \xff",
                                     b"\x00" * 9])
def test_bytes_after_the_end_marker_are_not_truncation(tmp_path, progressive, trailer):
    data, _ = _jpeg(progressive)
    clean, trailed = tmp_path / "clean.jpg", tmp_path / "trailed.jpg"
    clean.write_bytes(data)
    trailed.write_bytes(data + trailer)
    for full_decode in (False, True):
        assert check_image(str(trailed), full_decode=full_decode).problem is None
    assert np.array_equal(np.asarray(load_rgb(str(trailed))), np.asarray(load_rgb(str(clean))))
    batches = []
    for path in (clean, trailed):
        list_path = tmp_path / f"{path.stem}.txt"
        write_file_list(list_path, FileSet((str(path),) * 2, (0, 0)))
        batches.append(next(iter(build_loader(None, 2, 24, backend="torch", device="cpu", num_workers=0,
                                              file_list=list_path)))[0])
    assert torch.equal(*batches)


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_cut_jpegs_are_still_truncated(tmp_path, progressive, keep):
    data, _ = _jpeg(progressive)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: int(len(data) * keep)])
    assert check_image(str(cut)).problem.startswith("truncated")


# ------------------------------------------------------------------ 8. DALI names the bad file of any batch
class _FakeDali:
    """Stands in for DALI's iterator: like DALIGenericIterator, it runs the first batch in its
    constructor; it fails on the batch holding a file that PIL cannot decode, as nvImageCodec does."""

    def __init__(self, pipes, names, **kwargs):
        self.paths, self.batch_size = pipes[0]
        self.step = 0
        self.first = self._run()

    def _run(self):
        batch = self.paths[self.step * self.batch_size:(self.step + 1) * self.batch_size]
        if not batch:
            raise StopIteration
        for path in batch:
            if check_image(path, full_decode=True).problem:
                raise RuntimeError("Critical error in pipeline:\nnvImageCodec failure: '#4'")
        self.step += 1
        n = len(batch)
        return [{"images": torch.zeros(n, 3, 8, 8), "labels": torch.zeros(n, 1, dtype=torch.int32)}]

    def __next__(self):
        if self.first is not None:
            out, self.first = self.first, None
            return out
        return self._run()


@pytest.mark.parametrize("bad_batch", [0, 1])
def test_dali_decode_failure_names_the_file_in_the_first_batch_too(tmp_path, monkeypatch, bad_batch):
    import fastmae.data.dali as dali

    make_dataset(tmp_path, 8, seed=4, num_classes=1, image_size=40)
    files = image_folder(tmp_path / "train")
    loader_probe = build_loader(tmp_path, 4, 16, backend="torch", device="cpu", num_workers=0)
    order = loader_probe.batch_indices()
    bad = files.paths[order[bad_batch][2]]
    with open(bad, "r+b") as handle:  # corrupt the entropy data: the header still parses
        handle.seek(200)
        handle.write(b"\xff\x01" * 50)
    assert check_image(bad, full_decode=True).problem is not None
    monkeypatch.setitem(sys.modules, "nvidia", types.ModuleType("nvidia"))
    monkeypatch.setattr(dali, "_import_dali", lambda: (_FakeDali, types.SimpleNamespace(DROP="drop")))
    monkeypatch.setattr(dali, "build_pipeline", lambda paths, labels, config, **kw: (paths, config.batch_size))
    loader = build_loader(tmp_path, 4, 16, backend="dali", device="cpu", num_threads=1)
    with pytest.raises(RuntimeError, match="nvImageCodec") as raised:
        list(loader)
    assert bad in str(raised.value) and "scan-dataset" in str(raised.value)
