"""Skip lists and --skip_bad in the loaders: bad files left out or replaced, each named and counted."""

from __future__ import annotations

import logging

import pytest
import torch

from fastmae.data import build_loader
from fastmae.data.epoch import replacement_indices
from fastmae.data.files import FileSet, read_skip_list, write_file_list

pytest.importorskip("PIL")
BACKENDS = ["torch", "dali"]


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    from data_testing import write_bad_files

    root = tmp_path_factory.mktemp("skip")
    return root, write_bad_files(root)


def _list(root, paths, kinds, name):
    list_path = root / name
    write_file_list(list_path, FileSet(tuple(str(paths[k]) for k in kinds), tuple(range(len(kinds)))))
    return list_path


def _loader(backend, file_list, **kwargs):
    if backend == "dali":
        pytest.importorskip("nvidia.dali", reason="DALI not installed")
    kwargs.setdefault("num_threads", 1 if backend == "dali" else 0)
    return build_loader(None, 2, 16, backend=backend, device="cpu", file_list=file_list, flip_prob=0.0,
                        scale=(1, 1), ratio=(0.5, 2), **kwargs)


def test_skip_list_leaves_the_named_files_out(bad_folder):
    root, paths = bad_folder
    list_path = _list(root, paths, ["ok", "corrupt", "gray", "cut", "cmyk"], "five.txt")
    skip = root / "skip.txt"
    # a relative path, an absolute one, a file-list line and a comment
    skip.write_text(f"# bad ones\nclass_00/corrupt.JPEG\n{paths['cut']} 3\n")
    assert read_skip_list(skip) == {str(paths["corrupt"]), str(paths["cut"])}
    loader = _loader("torch", list_path, skip_list=skip)
    assert loader.files.paths == (str(paths["ok"]), str(paths["gray"]), str(paths["cmyk"]))
    assert loader.files.labels == (0, 2, 4)
    assert len(list(loader)) == 1
    everything = root / "everything.txt"
    everything.write_text("\n".join(str(paths[k]) for k in ["ok", "corrupt", "gray", "cut", "cmyk"]))
    with pytest.raises(ValueError, match="skip_list: it leaves out all 5 files"):
        _loader("torch", list_path, skip_list=everything)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("workers", [0, 1])
def test_skip_bad_replaces_names_and_counts(bad_folder, backend, workers, caplog):
    if backend == "dali" and workers == 0:
        pytest.skip("DALI always decodes in its own threads")
    root, paths = bad_folder
    kinds = ["corrupt", "ok", "cut", "gray", "empty", "png"]  # each bad file is followed by a good one
    list_path = _list(root, paths, kinds, f"mixed-{backend}-{workers}.txt")
    loader = _loader(backend, list_path, skip_bad=True, num_threads=workers)
    with caplog.at_level(logging.WARNING, logger="fastmae.data"):
        batches = list(loader)
    assert len(batches) == 3
    labels = sorted(int(v) for _, batch_labels in batches for v in batch_labels)
    # each bad file (labels 0, 2, 4) was replaced by the file after it (labels 1, 3, 5)
    assert labels == [1, 1, 3, 3, 5, 5]
    assert all(torch.isfinite(images).all() for images, _ in batches)
    assert set(loader.bad_files) == {str(paths[k]) for k in ("corrupt", "cut", "empty")}
    assert loader.replaced == 3
    for kind in ("corrupt", "cut", "empty"):
        assert any(f"{kind}.JPEG" in record.getMessage() and "replaced by" in record.getMessage()
                   for record in caplog.records)
    # a second epoch replaces again (counted) but names each file only once
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastmae.data"):
        list(loader)
    assert loader.replaced == 6 and not caplog.records


@pytest.mark.timeout(60)
def test_without_skip_bad_the_error_names_the_file_and_the_way_out(bad_folder):
    root, paths = bad_folder
    loader = _loader("torch", _list(root, paths, ["ok", "corrupt"], "plain.txt"))
    with pytest.raises(OSError, match=r"corrupt\.JPEG.*--skip_bad"):
        list(loader)


def test_skip_bad_gives_up_when_nothing_decodes(bad_folder):
    root, paths = bad_folder
    loader = _loader("torch", _list(root, paths, ["corrupt", "cut", "empty", "corrupt"], "hopeless.txt"),
                     skip_bad=True)
    with pytest.raises(OSError, match="all fail to decode"):
        list(loader)


def test_replacement_order():
    assert replacement_indices(3, 5) == [4, 0, 1, 2]
    assert replacement_indices(0, 1) == []
    assert len(replacement_indices(0, 1000)) == 16
