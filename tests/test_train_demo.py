"""The demo's own pieces: the first/last loss windows and the loss-curve PNG (the run itself is scripts/demo.sh)."""

import sys

import pytest
from PIL import Image

from fastmae.train.demo import plot_loss_curve, windowed_means


def test_windowed_means():
    losses = [2.0] * 20 + [5.0] * 7 + [1.0] * 20
    assert windowed_means(losses) == (2.0, 1.0)
    with pytest.raises(ValueError, match="at least 40"):
        windowed_means([1.0] * 39)


def test_loss_curve_png(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    path = plot_loss_curve([1.0 / (i + 1) for i in range(100)], tmp_path / "curve.png", loss_name="MSE")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.size == (800, 420)
        rgb = image.convert("RGB")
        pixels = {rgb.getpixel((x, y)) for x in range(0, 800, 3) for y in range(0, 420, 3)}
        assert (20, 60, 160) in pixels  # the smoothed curve, in dark blue


def test_loss_curve_labels(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    from matplotlib.figure import Figure

    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *args, **kwargs: saved.append(self))
    plot_loss_curve([1.0] * 40, tmp_path / "curve.png", loss_name="MSE on removed patches")
    axes = saved[0].axes[0]
    assert axes.get_title() == "MAE pretraining loss"
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("optimizer step", "MSE on removed patches")
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["per optimizer step", "mean of the last 20 steps"]


def test_loss_curve_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert plot_loss_curve([1.0] * 40, tmp_path / "curve.png") is None
    assert "matplotlib is not installed" in capsys.readouterr().err and not (tmp_path / "curve.png").exists()
