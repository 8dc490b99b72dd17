"""fastmae scan-dataset: what it flags, what it keeps, and that both loaders take its file list."""

from __future__ import annotations

import json

import pytest
import torch

from fastmae.data import build_loader, make_dataset
from fastmae.data.files import read_file_list
from fastmae.data.scan import check_image, main

pytest.importorskip("PIL")


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    """An ImageFolder of 12 good photos plus one file of each awkward or bad kind."""
    from data_testing import write_bad_files

    root = tmp_path_factory.mktemp("dirty")
    make_dataset(root, 12, seed=1, num_classes=2, image_size=(60, 90))
    return root, write_bad_files(root / "train")


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("ok", None),
        ("gray", None),
        ("cmyk", None),
        ("png", None),
        ("cut", "truncated"),
        ("corrupt", "not an image"),
        ("empty", "empty"),
    ],
)
def test_header_check(dirty, kind, problem):
    result = check_image(str(dirty[1][kind]))
    assert (result.problem is None) if problem is None else result.problem.startswith(problem)


def test_notes_for_files_the_loaders_convert(dirty):
    paths = dirty[1]
    assert check_image(str(paths["gray"])).note == "mode L"
    assert check_image(str(paths["cmyk"])).note == "mode CMYK"
    assert check_image(str(paths["png"])).note == "PNG data named .JPEG"
    assert check_image(str(paths["ok"])).note is None


def test_full_decode_catches_gray_filled_jpeg(dirty):
    """A cut JPEG that still ends in an end marker passes the header check (decoders fill it with gray)."""
    path = str(dirty[1]["closed_cut"])
    assert check_image(path).problem is None
    assert check_image(path, full_decode=True).problem.startswith("truncated")
    assert check_image(str(dirty[1]["ok"]), full_decode=True).problem is None


@pytest.mark.parametrize("workers", [1, 2])
def test_cli_writes_clean_list_both_loaders_accept(dirty, tmp_path, capsys, workers):
    root = dirty[0]
    out = tmp_path / "clean.txt"
    report = tmp_path / "report.json"
    status = main(
        [str(root), "--full-decode", "--workers", str(workers), "--output", str(out), "--report", str(report)]
    )
    assert status == 1  # bad files were found and left out
    text = capsys.readouterr().out
    assert "20 files" in text and "16 usable" in text and "4 left out" in text
    listed = read_file_list(out)
    names = {p.rsplit("/", 1)[-1] for p in listed.paths}
    assert len(listed) == 16 and {"gray.JPEG", "cmyk.JPEG", "png.JPEG", "ok.JPEG"} <= names
    assert not names & {"cut.JPEG", "closed_cut.JPEG", "corrupt.JPEG", "empty.JPEG"}
    findings = json.loads(report.read_text())
    assert {f["path"].rsplit("/", 1)[-1] for f in findings if f["problem"]} == {
        "cut.JPEG",
        "closed_cut.JPEG",
        "corrupt.JPEG",
        "empty.JPEG",
    }
    backends = ["torch"]
    try:
        import nvidia.dali  # noqa: F401

        backends.append("dali")
    except ImportError:
        pass
    for backend in backends:
        loader = build_loader(None, 4, 32, backend=backend, device="cpu", file_list=out, num_threads=1)
        batches = list(loader)
        assert len(batches) == 4 and all(images.shape == (4, 3, 32, 32) for images, _ in batches)
        assert all(torch.isfinite(images).all() for images, _ in batches)


def test_cli_clean_dataset_exit_zero(tmp_path, capsys):
    make_dataset(tmp_path, 6, seed=2, image_size=40)
    assert main([str(tmp_path), "--workers", "1"]) == 0
    assert len(read_file_list(tmp_path / "clean_files.txt")) == 6
    assert "0 left out" in capsys.readouterr().out


def test_file_list_format(tmp_path):
    from fastmae.data.files import FileSet, write_file_list

    (tmp_path / "a b").mkdir()
    files = FileSet((str(tmp_path / "a b" / "x 1.jpg"), "/abs/elsewhere.png"), (3, 0))
    write_file_list(tmp_path / "list.txt", files)
    assert (tmp_path / "list.txt").read_text().splitlines()[0] == "a b/x 1.jpg 3"
    assert read_file_list(tmp_path / "list.txt") == files
    (tmp_path / "broken.txt").write_text("no_label_here\n")
    with pytest.raises(ValueError, match="file_list"):
        read_file_list(tmp_path / "broken.txt")
