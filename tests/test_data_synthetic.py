"""The embedded synthetic dataset: deterministic, ImageNet-like sizes, photo-like statistics."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from fastmae.data import make_dataset
from fastmae.data.synthetic import main, synthetic_image


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.JPEG"))}


def test_deterministic_for_a_seed(tmp_path):
    a = make_dataset(tmp_path / "a", 6, seed=4, image_size=(40, 70))
    b = make_dataset(tmp_path / "b", 6, seed=4, image_size=(40, 70), workers=2)
    c = make_dataset(tmp_path / "c", 6, seed=5, image_size=(40, 70))
    assert _digest(a) == _digest(b)
    assert set(_digest(a).values()).isdisjoint(_digest(c).values())


def test_layout_and_sizes(tmp_path):
    split = make_dataset(tmp_path, 7, seed=0, num_classes=3, image_size=(50, 60))
    assert split == tmp_path / "train"
    assert sorted(p.name for p in split.iterdir()) == ["class_00", "class_01", "class_02"]
    files = sorted(split.rglob("*.JPEG"))
    assert len(files) == 7 and len(list((split / "class_00").iterdir())) == 3
    for path in files:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert 50 <= image.width <= 60 and 50 <= image.height <= 60


def test_default_is_imagenet_like(tmp_path):
    split = make_dataset(tmp_path, 4, seed=0)
    sizes = []
    for path in split.rglob("*.JPEG"):
        with Image.open(path) as image:
            assert 350 <= image.width <= 500 and 350 <= image.height <= 500
        sizes.append(path.stat().st_size)
    assert 40_000 < np.mean(sizes) < 200_000  # ImageNet averages ~110 KB


def _spectral_slope(gray: np.ndarray) -> float:
    """Slope of log radial power vs log frequency (natural photos: about -2; white noise: 0)."""
    power = np.abs(np.fft.fftshift(np.fft.fft2(gray - gray.mean()))) ** 2
    h, w = gray.shape
    y, x = np.indices(power.shape)
    radius = np.hypot(y - h // 2, x - w // 2).astype(int)
    radial = np.bincount(radius.ravel(), power.ravel()) / np.bincount(radius.ravel())
    freqs = np.arange(4, min(h, w) // 2)
    return float(np.polyfit(np.log(freqs), np.log(radial[freqs]), 1)[0])


def test_natural_image_statistics():
    slopes = []
    for index in range(4):
        pixels = synthetic_image(0, index, (256, 256)).astype(np.float64)
        gray = pixels.mean(axis=2)
        slopes.append(_spectral_slope(gray))
        # uses the range and has sharp edges somewhere (shape borders), but is mostly smooth
        assert pixels.std() > 20
        grad = np.abs(np.diff(gray, axis=1))
        assert np.percentile(grad, 99.9) > 30 and np.median(grad) < 15  # white noise: ~75
    assert all(-3.5 < s < -1.5 for s in slopes), slopes
    white = np.random.default_rng(0).uniform(0, 255, (256, 256))
    assert abs(_spectral_slope(white)) < 0.3  # the check does tell noise from photos


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_images": 0}, "num_images"),
        ({"image_size": (60, 50)}, "image_size"),
        ({"image_size": 4}, "image_size"),
        ({"quality": 0}, "quality"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    args = {"num_images": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_dataset(tmp_path, **args)


def test_cli(tmp_path, capsys):
    assert main([str(tmp_path), "--num-images", "3", "--image-size", "32", "48", "--workers", "1"]) == 0
    assert len(list((tmp_path / "train").rglob("*.JPEG"))) == 3
    assert "wrote 3 images" in capsys.readouterr().out


def test_labelled_variant_layout_and_classes(tmp_path, capsys):
    from fastmae.data.synthetic import SHAPE_KINDS, make_labelled_dataset

    root = make_labelled_dataset(tmp_path / "l", 7, 4, seed=0, image_size=(30, 40))
    for split, count in (("train", 7), ("val", 4)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(SHAPE_KINDS)
        assert len(list((root / split).rglob("*.JPEG"))) == count
    assert {p.name for p in (root / "train").rglob("*.JPEG")}.isdisjoint(p.name for p in (root / "val").rglob("*"))
    assert (root / "val" / SHAPE_KINDS[7 % 3] / "img_0000007.JPEG").is_file()  # image i is of kind i % 3
    # a labelled image differs from the unlabelled one of the same index; the unlabelled stream is unchanged
    assert not np.array_equal(synthetic_image(0, 5, (72, 112), kind=1), synthetic_image(0, 5, (72, 112)))
    assert hashlib.md5(synthetic_image(0, 5, (72, 112)).tobytes()).hexdigest() == \
        "2a726579ec74c77668524a33396791b5"  # the pixels before the labelled variant existed (numpy + Pillow here)
    assert main([str(tmp_path / "cli"), "--labelled", "--num-images", "3", "--num-val", "3", "--image-size",
                 "20", "20", "--workers", "1"]) == 0
    assert "3 train and 3 val images" in capsys.readouterr().out
    with pytest.raises(ValueError, match="num_val"):
        make_labelled_dataset(tmp_path / "bad", 3, 0)
