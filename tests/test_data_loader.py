"""The data loaders (torch and DALI's CPU backend): shapes, equivalence, crop statistics, sharding,
resume, bad files. Everything is tiny so the file runs in well under a minute on 2 cores."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastmae.data import IMAGENET_MEAN, IMAGENET_STD, build_loader, make_dataset
from fastmae.data.epoch import LOADER_BACKENDS
from fastmae.data.files import FileSet, epoch_order, write_file_list
from fastmae.data.transforms import random_resized_crop_window

pytest.importorskip("PIL")
BACKENDS = list(LOADER_BACKENDS)


def _needs(backend: str) -> None:
    if backend == "dali":
        pytest.importorskip("nvidia.dali", reason="DALI not installed")


def _loader(root, backend, batch_size=4, input_size=32, **kwargs):
    _needs(backend)
    if "num_workers" not in kwargs:
        kwargs.setdefault("num_threads", 1 if backend == "dali" else 0)
    return build_loader(root, batch_size, input_size, backend=backend, device="cpu", **kwargs)


def _pixels(images: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation: (B,3,H,W) back to the 0..255 scale."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.float() * std + mean) * 255


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """22 square 80 px photo-like JPEGs, each in its own class so labels identify files."""
    root = tmp_path_factory.mktemp("photos")
    make_dataset(root, 22, seed=3, num_classes=22, image_size=80)
    return root


@pytest.fixture(scope="module")
def coordinates(tmp_path_factory):
    """A file list naming one coordinate PNG 480 times: each output tells its crop window and flip."""
    from data_testing import coordinate_png

    folder = tmp_path_factory.mktemp("coords")
    (folder / "coords.png").write_bytes(coordinate_png())
    list_path = folder / "list.txt"
    write_file_list(list_path, FileSet(tuple([str(folder / "coords.png")] * 480), tuple(range(480))))
    return list_path


# ---------------------------------------------------------------- shapes, dtypes, values
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batches_shape_dtype_range(photos, backend, dtype):
    loader = _loader(photos, backend, batch_size=5, input_size=(24, 40), dtype=dtype)
    assert len(loader) == 22 // 5
    batches = list(loader)
    assert len(batches) == 4
    low = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    high = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    for images, labels in batches:
        assert images.shape == (5, 3, 24, 40) and images.dtype == dtype and images.device.type == "cpu"
        assert images.is_contiguous()
        assert labels.shape == (5,) and labels.dtype == torch.int64
        assert torch.isfinite(images.float()).all()
        assert low - 0.02 <= images.float().min() and images.float().max() <= high + 0.02
        assert ((labels >= 0) & (labels < 22)).all()
    # real content, not constant: every image has spread in every channel
    first = batches[0][0].float()
    assert (first.flatten(2).std(dim=2) > 0.05).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_mean_std(photos, backend):
    loader = _loader(photos, backend, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    images, _ = next(iter(loader))
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.max() > 0.5


# ---------------------------------------------------------------- backends agree
@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_dali_cpu_matches_torch_on_fixed_crop(photos, flip_prob):
    """Whole-image crop (area 1, ratio 1 on square images) and a fixed flip: both backends must give
    the same pixels up to resampling differences. Both decode with libjpeg-turbo (identical pixels);
    PIL's and DALI's antialiased bicubic resize differ in filter details and rounding, measured at
    <= 6 of 255 per pixel and ~0.2 of 255 on average; we allow 10 max, 1 mean, 2 at the 99th percentile."""
    torch_batches = list(_loader(photos, "torch", scale=(1, 1), ratio=(1, 1), flip_prob=flip_prob))
    dali_batches = list(_loader(photos, "dali", scale=(1, 1), ratio=(1, 1), flip_prob=flip_prob))
    assert len(torch_batches) == len(dali_batches) == 5
    for (t_img, t_lab), (d_img, d_lab) in zip(torch_batches, dali_batches):
        assert torch.equal(t_lab, d_lab)  # same files in the same order
        diff = (_pixels(t_img) - _pixels(d_img)).abs()
        assert diff.max() <= 10 and diff.mean() <= 1.0 and diff.flatten().quantile(0.99) <= 2.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_flip_mirrors_the_image(photos, backend):
    plain, _ = next(iter(_loader(photos, backend, scale=(1, 1), ratio=(1, 1), flip_prob=0.0)))
    mirrored, _ = next(iter(_loader(photos, backend, scale=(1, 1), ratio=(1, 1), flip_prob=1.0)))
    torch.testing.assert_close(mirrored, plain.flip(-1))
    assert not torch.allclose(mirrored, plain)


# ---------------------------------------------------------------- crop distribution
def _expected_mae_area_mean(scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> float:
    """E[area fraction] for a square image: (area, log ratio) uniform on the region where the crop fits."""
    log_r = np.linspace(math.log(ratio[0]), math.log(ratio[1]), 20001)
    top = np.minimum(scale[1], np.exp(-np.abs(log_r)))
    mass = np.clip(top - scale[0], 0, None)
    first_moment = np.clip(top**2 - scale[0] ** 2, 0, None) / 2
    return float(first_moment.sum() / mass.sum())


def _windows_from_outputs(images: torch.Tensor, side: int = 256):
    """Per image: (area fraction, aspect w/h, flipped) read back from the coordinate ramps."""
    pixels = _pixels(images).double()
    out_h, out_w = pixels.shape[-2:]
    cols = pixels[:, 0, out_h // 4 : -out_h // 4].mean(dim=1)  # red vs output column
    rows = pixels[:, 1, :, out_w // 4 : -out_w // 4].mean(dim=2)  # green vs output row
    k = torch.arange(out_w, dtype=torch.float64)
    inner = slice(2, out_w - 2)  # the outermost columns feel the resampling filter's border
    slope_x = torch.stack(
        [
            torch.linalg.lstsq(
                torch.stack([k[inner], torch.ones_like(k[inner])], 1), c[inner, None]
            ).solution[0, 0]
            for c in cols
        ]
    )
    k = torch.arange(out_h, dtype=torch.float64)
    inner = slice(2, out_h - 2)
    slope_y = torch.stack(
        [
            torch.linalg.lstsq(
                torch.stack([k[inner], torch.ones_like(k[inner])], 1), r[inner, None]
            ).solution[0, 0]
            for r in rows
        ]
    )
    crop_w, crop_h = slope_x.abs() * out_w, slope_y * out_h
    return crop_w * crop_h / side**2, crop_w / crop_h, slope_x < 0


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_crop_and_flip_statistics_match_mae(coordinates, backend):
    loader = _loader(None, backend, batch_size=48, input_size=32, file_list=coordinates, seed=11)
    areas, aspects, flips = [], [], []
    for images, _ in loader:
        area, aspect, flipped = _windows_from_outputs(images)
        areas.append(area), aspects.append(aspect), flips.append(flipped)
    area, aspect, flipped = torch.cat(areas), torch.cat(aspects), torch.cat(flips).double()
    n = area.numel()
    assert n == 480
    # bounds, with slack for reading windows back through a 32 px bicubic resize
    assert area.min() > 0.2 - 0.03 and area.max() < 1.0 + 0.03
    assert aspect.min() > 0.75 * 0.93 and aspect.max() < 4 / 3 / 0.93
    # mean area: per-sample std is ~0.22, so 4 standard errors ~0.04, plus read-back bias
    assert abs(area.mean().item() - _expected_mae_area_mean()) < 0.05
    assert area.std().item() > 0.15  # spread over the range, not a fixed crop
    # log aspect is symmetric around 0 (std ~0.16 per sample)
    assert abs(aspect.log().mean().item()) < 0.035
    # flips: Bernoulli(0.5), 4.5 standard errors
    assert abs(flipped.mean().item() - 0.5) < 4.5 * math.sqrt(0.25 / n)


def test_crop_window_distribution_exact():
    """The host crop sampler itself, 20000 draws on a square and on a wide image."""
    rng = np.random.default_rng(0)
    windows = np.array(
        [random_resized_crop_window(rng, 400, 400, (0.2, 1.0), (3 / 4, 4 / 3)) for _ in range(20000)]
    )
    top, left, h, w = windows.T
    area = h * w / 400**2
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 400).all() and (left + w <= 400).all()
    assert area.min() >= 0.2 - 0.01 and area.max() <= 1.0
    assert abs(area.mean() - _expected_mae_area_mean()) < 0.006  # 4.5 standard errors
    log_aspect = np.log(w / h)
    assert log_aspect.min() >= math.log(3 / 4) - 0.01 and log_aspect.max() <= math.log(4 / 3) + 0.01
    assert abs(log_aspect.mean()) < 0.006
    # uniform position: the crop centre is spread over the free range
    centre = (left + w / 2) / 400
    assert abs(centre.mean() - 0.5) < 0.01
    # a very wide image rarely fits: the fallback is a centred crop at the extreme allowed ratio
    assert random_resized_crop_window(np.random.default_rng(1), 10, 1000, (0.9, 1.0), (3 / 4, 4 / 3)) == (
        0,
        500 - 7,
        10,
        13,
    )


# ---------------------------------------------------------------- sharding, epochs, resume
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_ranks_cover_every_file_once_per_epoch(photos, backend):
    seen = {}
    for epoch in (0, 1):
        per_rank = []
        for rank in (0, 1):
            loader = _loader(photos, backend, batch_size=3, rank=rank, world_size=2, seed=5)
            loader.set_epoch(epoch)
            assert len(loader) == 22 // 6
            per_rank.append([labels.tolist() for _, labels in loader])
        files = [label for rank_batches in per_rank for batch in rank_batches for label in batch]
        assert len(files) == len(set(files)) == 18  # 22 files, remainder of 4 dropped
        assert set(per_rank[0][0]).isdisjoint(per_rank[1][0])
        seen[epoch] = per_rank
    assert seen[0] != seen[1]  # a new order (and a new dropped remainder) next epoch


def test_epoch_order_properties():
    orders = [epoch_order(103, 4, seed=1, epoch=2, rank=r, world_size=3) for r in range(3)]
    assert all(o.shape == (103 // 12, 4) for o in orders)
    joined = np.concatenate([o.ravel() for o in orders])
    assert len(set(joined.tolist())) == joined.size == 96
    assert not np.array_equal(orders[0], epoch_order(103, 4, seed=1, epoch=3, rank=0, world_size=3))
    assert not np.array_equal(orders[0], epoch_order(103, 4, seed=2, epoch=2, rank=0, world_size=3))
    np.testing.assert_array_equal(orders[1], epoch_order(103, 4, seed=1, epoch=2, rank=1, world_size=3))


def test_torch_resume_mid_epoch_is_bit_identical(photos):
    full = _loader(photos, "torch", batch_size=4, seed=9)
    full.set_epoch(3)
    uninterrupted = list(full)
    resumed = _loader(photos, "torch", batch_size=4, seed=9, num_workers=2)  # workers do not matter
    resumed.set_epoch(3, start_step=2)
    after = list(resumed)
    assert len(after) == len(uninterrupted) - 2
    for (a_img, a_lab), (b_img, b_lab) in zip(after, uninterrupted[2:]):
        assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)
    # start_step applies once: the next pass is the whole epoch again
    assert len(list(resumed)) == len(uninterrupted)


def test_torch_same_seed_same_batches_new_epoch_new_crops(photos):
    a = _loader(photos, "torch", seed=4)
    b = _loader(photos, "torch", seed=4)
    first_a, first_b = next(iter(a)), next(iter(b))
    assert torch.equal(first_a[0], first_b[0])
    c = _loader(photos, "torch", seed=4, scale=(0.2, 0.2))
    c.set_epoch(1)
    assert not torch.equal(next(iter(c))[0], first_a[0])


def test_dali_resume_reads_the_same_files(photos):
    full = _loader(photos, "dali", batch_size=4, seed=9)
    full.set_epoch(2)
    uninterrupted = [labels for _, labels in full]
    full.set_epoch(2, start_step=3)
    resumed = [labels for _, labels in full]
    assert len(resumed) == len(uninterrupted) - 3
    for a, b in zip(resumed, uninterrupted[3:]):
        assert torch.equal(a, b)


def test_dali_is_deterministic_for_a_seed(photos):
    a = [images for images, _ in _loader(photos, "dali", seed=2)]
    b = [images for images, _ in _loader(photos, "dali", seed=2)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ---------------------------------------------------------------- awkward and bad files
@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    from data_testing import write_bad_files

    root = tmp_path_factory.mktemp("bad")
    return root, write_bad_files(root)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gray_cmyk_and_misnamed_png_come_out_rgb(bad_folder, backend):
    root, paths = bad_folder
    list_path = root / "awkward.txt"
    kinds = ["ok", "gray", "cmyk", "png"]
    write_file_list(list_path, FileSet(tuple(str(paths[k]) for k in kinds), (0, 1, 2, 3)))
    images, labels = next(
        iter(_loader(None, backend, file_list=list_path, scale=(1, 1), ratio=(0.5, 2), flip_prob=0.0))
    )
    pixels = _pixels(images)[labels.argsort()]
    assert images.shape == (4, 3, 32, 32)
    # the misnamed PNG holds the same picture as the JPEG; CMYK within JPEG error; gray has R == G == B
    assert (pixels[3] - pixels[0]).abs().mean() < 6
    assert (pixels[2] - pixels[0]).abs().mean() < 12
    assert (pixels[1][0] - pixels[1][1]).abs().max() < 1.5 and (pixels[1][1] - pixels[1][2]).abs().max() < 1.5


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["corrupt", "cut", "empty"])
def test_bad_file_error_names_the_file(bad_folder, backend, kind):
    root, paths = bad_folder
    list_path = root / f"with_{kind}.txt"
    write_file_list(list_path, FileSet((str(paths["ok"]), str(paths[kind])) * 2, (0, 1, 0, 1)))
    loader = _loader(None, backend, batch_size=2, file_list=list_path)
    with pytest.raises((OSError, RuntimeError), match=f"{kind}.JPEG"):
        list(loader)


@pytest.mark.parametrize("backend", BACKENDS)
def test_closed_cut_jpeg_decodes_with_gray_fill(bad_folder, backend):
    """Documented behaviour (docs/data.md): a JPEG cut short but ending in an end marker decodes
    without error in both backends, the missing part filled flat gray; scan-dataset catches it."""
    root, paths = bad_folder
    list_path = root / "closed_cut.txt"
    write_file_list(list_path, FileSet((str(paths["closed_cut"]),), (0,)))
    images, _ = next(
        iter(
            _loader(
                None,
                backend,
                batch_size=1,
                file_list=list_path,
                scale=(1, 1),
                ratio=(0.5, 2),
                flip_prob=0.0,
                mean=(0, 0, 0),
                std=(1, 1, 1),
            )
        )
    )
    bottom = images[0, :, -4:] * 255
    assert (bottom - 128).abs().max() < 2


# ---------------------------------------------------------------- arguments and imports
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"backend": "tf"}, ValueError, "backend"),
        ({"rank": 2, "world_size": 2}, ValueError, "rank"),
        ({"batch_size": 50}, ValueError, "batch_size"),
        ({"drop_last": False}, ValueError, "drop_last"),
        ({"dtype": torch.int8}, TypeError, "dtype"),
        ({"input_size": 0}, ValueError, "input_size"),
        ({"scale": (0.5, 0.2)}, ValueError, "scale"),
        ({"std": (1, 0, 1)}, ValueError, "std"),
        ({"num_threads": 1, "num_workers": 2}, ValueError, "num_threads"),
    ],
)
def test_bad_arguments(photos, kwargs, error, match):
    args = {"batch_size": 4, "backend": "torch", "device": "cpu", **kwargs}
    with pytest.raises(error, match=match):
        build_loader(photos, **args)


def test_missing_dataset_is_named(tmp_path):
    with pytest.raises(ValueError, match="data_path"):
        build_loader(tmp_path / "nowhere", 4, device="cpu")


def test_set_epoch_checks(photos):
    loader = _loader(photos, "torch")
    with pytest.raises(ValueError, match="start_step"):
        loader.set_epoch(0, start_step=len(loader) + 1)
    with pytest.raises(ValueError, match="epoch"):
        loader.set_epoch(-1)


def test_dali_missing_gives_install_hint(photos, monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(ImportError, match="pip install"):
        build_loader(photos, 4, backend="dali", device="cpu")


def test_import_is_light():
    code = (
        "import sys, fastmae.data; assert 'nvidia.dali' not in sys.modules; "
        "assert 'PIL.Image' not in sys.modules; print(fastmae.data.IMAGENET_MEAN)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.timeout(60)
def test_bad_file_in_a_worker_process_raises_not_hangs(bad_folder):
    root, paths = bad_folder
    list_path = root / "worker_corrupt.txt"
    write_file_list(list_path, FileSet((str(paths["ok"]), str(paths["corrupt"])) * 2, (0, 1, 0, 1)))
    loader = _loader(None, "torch", batch_size=2, file_list=list_path, num_workers=2)
    with pytest.raises(OSError, match=r"corrupt\.JPEG"):
        list(loader)
