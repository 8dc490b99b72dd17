"""The demo's own pieces: the first/last loss windows and the loss-curve PNG (the run itself is scripts/demo.sh)."""

import pytest
from PIL import Image

from fastmae.train.demo import plot_loss_curve, windowed_means


def test_windowed_means():
    losses = [2.0] * 20 + [5.0] * 7 + [1.0] * 20
    assert windowed_means(losses) == (2.0, 1.0)
    with pytest.raises(ValueError, match="at least 40"):
        windowed_means([1.0] * 39)


def test_loss_curve_png(tmp_path):
    path = plot_loss_curve([1.0 / (i + 1) for i in range(100)], tmp_path / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.size == (800, 420)
        # the smoothed curve is drawn in dark blue somewhere inside the frame
        assert (20, 60, 160) in {image.getpixel((x, y)) for x in range(60, 740, 5) for y in range(60, 360)}
