"""How an op picks its kernel (``fastmae.ops._backend``): FASTMAE_BACKEND, the native library and its
fallback, a compiled model on the auto backend, and ``fastmae info``.

The kernels themselves are tested in each op's test file, on every backend (tests/op_testing.BACKENDS).
"""

from __future__ import annotations

import pytest
import torch
from op_testing import assert_bitwise_equal
from test_op_unshuffle import reference_decoder_input

from fastmae import _native, info, reference
from fastmae.ops import _backend


@pytest.fixture
def native(use_backend, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Skips (fails on CI) unless the native library loads; leaves FASTMAE_BACKEND unset (auto)."""
    use_backend("native")
    monkeypatch.delenv("FASTMAE_BACKEND", raising=False)


def shuffle_ids(batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids_shuffle = torch.rand(batch, length).argsort(dim=1)
    return ids_shuffle, ids_shuffle.argsort(dim=1)


def test_model_compiles_fullgraph_with_auto_native_backend(native, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The per-call backend choice (extension lookup included) must not break a compiled graph."""
    from fastmae.models import create_model

    monkeypatch.delenv("FASTMAE_DEBUG", raising=False)
    model = create_model("mae_vit_test")
    imgs, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    eager = model(imgs, 0.75, noise)[0]
    compiled = torch.compile(lambda i, n: model(i, 0.75, n)[0], fullgraph=True, backend="aot_eager")(imgs, noise)
    torch.testing.assert_close(compiled, eager)


# --------------------------------------------------------------------------------------
# Backend selection, the public API, the pure-Python fallback, `fastmae info`
# --------------------------------------------------------------------------------------
def test_auto_selects_native_for_cpu(native) -> None:  # type: ignore[no-untyped-def]
    cpu = torch.device("cpu")
    assert _backend.select_backend(cpu) == "native"
    assert _backend.kernel_for(torch.zeros(1)) == "native"
    assert _backend.select_backend(cpu, has_native=False) == "torch"  # an op without a native twin
    assert _backend.select_backend(torch.device("cuda")) == "triton"


def test_public_api_with_native_backend(native, monkeypatch):  # type: ignore[no-untyped-def]
    from fastmae.ops import masked_mse_loss, patchify_gather, unshuffle_with_mask_token

    monkeypatch.setenv("FASTMAE_BACKEND", "native")
    imgs = torch.randn(2, 3, 28, 20, requires_grad=True)
    ids_shuffle, ids_restore = shuffle_ids(2, 35)
    ids_keep = ids_shuffle[:, :8]
    visible = patchify_gather(imgs, ids_keep, 4)
    assert_bitwise_equal(visible, reference.patchify(imgs, 4).gather(1, ids_keep[..., None].expand(-1, -1, 48)))
    x_vis = torch.randn(2, 9, 16)
    mask_token, pos_embed = torch.randn(1, 1, 16), torch.randn(1, 36, 16)
    tokens = unshuffle_with_mask_token(x_vis, mask_token, ids_restore, pos_embed)
    assert_bitwise_equal(tokens, reference_decoder_input(x_vis, mask_token, ids_restore, pos_embed))
    pred = torch.randn(2, 35, 48)
    mask = (ids_restore >= 8).float()
    loss = masked_mse_loss(pred, imgs, None, 4, norm_pix=True, mask=mask)
    expected = reference.mae_loss(imgs.double(), pred.double(), mask.double(), 4, True).float()
    torch.testing.assert_close(loss, expected, rtol=2e-6, atol=1e-6)
    (grad,) = torch.autograd.grad(visible.sum() + loss, imgs)
    assert torch.isfinite(grad).all()


def test_fallback_when_extension_unavailable(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(_native, "available", lambda: False)
    monkeypatch.delenv("FASTMAE_BACKEND", raising=False)
    assert _backend.select_backend(torch.device("cpu")) == "torch"
    monkeypatch.setenv("FASTMAE_BACKEND", "native")
    with pytest.raises(RuntimeError, match="native extension is not available"):
        _backend.select_backend(torch.device("cpu"))


def test_public_api_falls_back_to_torch(monkeypatch):  # type: ignore[no-untyped-def]
    from fastmae.ops import masked_mse_loss, patchify_gather, unshuffle_with_mask_token

    monkeypatch.setattr(_native, "available", lambda: False)
    monkeypatch.delenv("FASTMAE_BACKEND", raising=False)
    imgs = torch.randn(1, 3, 28, 20)
    ids_shuffle, ids_restore = shuffle_ids(1, 35)
    visible = patchify_gather(imgs, ids_shuffle[:, :1], [4, 4])
    assert_bitwise_equal(visible, reference.patchify(imgs, 4).gather(1, ids_shuffle[:, :1, None].expand(-1, -1, 48)))
    x_vis, mask_token = torch.randn(1, 2, 8), torch.randn(1, 1, 8)
    tokens = unshuffle_with_mask_token(x_vis, mask_token, ids_restore)
    assert_bitwise_equal(tokens, reference_decoder_input(x_vis, mask_token, ids_restore, None))
    pred = torch.randn(1, 35, 48)
    mask = (ids_restore >= 1).float()
    loss = masked_mse_loss(pred, imgs, None, 4, mask=mask)
    expected = reference.mae_loss(imgs.double(), pred.double(), mask.double(), 4, False).float()
    torch.testing.assert_close(loss, expected, rtol=2e-6, atol=1e-6)


def test_info_reports_backends(capsys, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.delenv("FASTMAE_BACKEND", raising=False)
    assert info.main([]) == 0
    text = capsys.readouterr().out
    assert f"torch {torch.__version__}" in text
    cpu_choice = "native" if _native.available() else "torch"
    for op in info.FUSED_OPS:
        rows = [line.split() for line in text.splitlines() if line.startswith(op)]
        assert [row[1] for row in rows] == ["cpu", "cuda"], text
        assert rows[0][-1] == cpu_choice and rows[1][-1] == "triton", text
    monkeypatch.setattr(_native, "available", lambda: False)
    assert info.main(["--json"]) == 0
    report = __import__("json").loads(capsys.readouterr().out)
    assert report["native"]["available"] is False
    assert report["ops"]["patchify_gather"]["cpu"] == {"available": ["triton", "torch"], "chosen": "torch"}
