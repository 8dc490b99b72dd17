"""All ops in one MIM step: random_masking -> patchify_gather -> linear -> unshuffle_with_mask_token -> linear
-> masked_mse_loss (removed-only pred), compiled with fullgraph=True (aot_eager) against eager, both paths."""

from __future__ import annotations

import pytest
import torch

from fastmae.ops import masked_mse_loss, patchify_gather, random_masking, unshuffle_with_mask_token

PATCH, CHANS, GRID_H, GRID_W, WIDTH = 4, 3, 3, 2, 8
NUM_PATCHES, PATCH_DIM = GRID_H * GRID_W, PATCH * PATCH * CHANS


def mim_step(imgs, noise, encoder, cls_token, mask_token, pos_embed, decoder):  # type: ignore[no-untyped-def]
    """A toy MAE step: every fastmae op once; the loss reads only the removed patches' predictions."""
    masking = random_masking(imgs.shape[0], NUM_PATCHES, 0.5, noise=noise)
    visible = patchify_gather(imgs, masking.ids_keep, PATCH)  # (B, K, P)
    tokens = encoder(visible)  # (B, K, d)
    x_vis = torch.cat([cls_token.expand(imgs.shape[0], -1, -1), tokens], dim=1)
    decoder_in = unshuffle_with_mask_token(x_vis, mask_token, masking.ids_restore, pos_embed)  # (B, 1+L, d)
    mixed = decoder_in + decoder_in.mean(dim=1, keepdim=True)  # stands in for attention: tokens see each other
    pred = decoder(mixed[:, 1:] * mixed[:, :1])  # (B, L, P) in patch order; the cls row gates it
    # removed-only pred: row r is patch ids_shuffle[b, K + r]
    removed = masking.ids_shuffle[:, masking.num_keep :]
    pred_removed = pred.gather(1, removed.unsqueeze(-1).expand(-1, -1, PATCH_DIM))
    return masked_mse_loss(pred_removed, imgs, masking.ids_restore, PATCH, norm_pix=True)


@pytest.mark.parametrize("path", ["torch", "triton"])
def test_all_ops_compile_fullgraph_like_eager(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTMAE_BACKEND", path)
    monkeypatch.setenv("FASTMAE_DEBUG", "1")  # poisoned outputs (eager value checks; skipped while tracing)
    batch = 2
    imgs = torch.randn(batch, CHANS, GRID_H * PATCH, GRID_W * PATCH, requires_grad=True)
    noise = torch.rand(batch, NUM_PATCHES)
    encoder, decoder = torch.nn.Linear(PATCH_DIM, WIDTH), torch.nn.Linear(WIDTH, PATCH_DIM)
    cls_token = torch.randn(1, 1, WIDTH, requires_grad=True)
    mask_token = torch.randn(1, 1, WIDTH, requires_grad=True)
    pos_embed = torch.randn(1, 1 + NUM_PATCHES, WIDTH, requires_grad=True)
    args = (imgs, noise, encoder, cls_token, mask_token, pos_embed, decoder)
    leaves = [imgs, cls_token, mask_token, pos_embed, *encoder.parameters(), *decoder.parameters()]

    eager_loss = mim_step(*args)
    eager_grads = torch.autograd.grad(eager_loss, leaves)
    compiled_loss = torch.compile(mim_step, fullgraph=True, backend="aot_eager")(*args)
    compiled_grads = torch.autograd.grad(compiled_loss, leaves)

    assert torch.isfinite(eager_loss) and eager_loss.dtype == torch.float32
    # the torch path compiles the same code it runs; under the interpreter the graph holds the torch branch
    # while eager runs the kernels, which sum in another order: equal to float32 rounding there
    tolerance = {"rtol": 0, "atol": 0} if path == "torch" else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(compiled_loss, eager_loss, **tolerance)
    names = ["imgs", "cls_token", "mask_token", "pos_embed", "encoder.weight", "encoder.bias", "decoder.weight",
             "decoder.bias"]  # fmt: skip
    for name, got, want in zip(names, compiled_grads, eager_grads, strict=True):
        assert got.abs().sum() > 0, f"grad {name} is all zero"
        torch.testing.assert_close(got, want, **tolerance, msg=lambda m, n=name: f"grad {n}: {m}")
