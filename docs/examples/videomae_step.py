"""A VideoMAE-style training step written with fastmae.ops (runnable on CPU; pytest runs ``test_*`` below).

VideoMAE cuts a clip into tubelets of (t, p, p) frames x pixels, masks 90% of them with *tube masking*
(the same spatial positions in every time slice, so a masked patch cannot be copied from the next
frame), encodes only the visible tubelets and reconstructs the masked ones with a light decoder. With
fastmae.ops the step is:

    masking = tube_masking(B, (T/t, H/p, W/p), 0.9, generator=g)              # K = T/t * int(HW/p^2 * 0.1)
    visible = patchify_gather(video, masking.ids_keep, (t, p, p))             # (B, K, t*p*p*C), one pass
    latent  = encoder(patch_embed(visible) + pos_embed[ids_keep])             # (B, 1+K, D), cls row first
    tokens  = unshuffle_with_mask_token(decoder_embed(latent), mask_token, masking.ids_restore, dec_pos)
    pred    = decoder(tokens)[:, 1:]                                          # (B, L, t*p*p*C)
    loss    = masked_mse_loss(pred, video, None, (t, p, p), mask=masking.mask, norm_pix=True)

Tubelet elements are ordered (t, i, j, c), channel last, and tubelets row-major over (T, H, W): the same
layout in patchify_gather and in the loss's target, so a Linear patch embedding on gathered tubelets is a
Conv3d with its weight permuted to that order. (VideoMAE itself has no cls token; fastmae's unshuffle keeps
a leading cls row, which this tiny model uses as a global token.)

Run it: ``PYTHONPATH=. python docs/examples/videomae_step.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastmae.models.blocks import Block
from fastmae.ops import masked_mse_loss, patchify_gather, tube_masking, unshuffle_with_mask_token


def sincos_table(dim: int, num_tokens: int) -> torch.Tensor:
    """(1, 1 + num_tokens, dim) fixed 1-D sin-cos table over the tubelet index (VideoMAE's), a zero cls row first."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = torch.arange(num_tokens, dtype=torch.float64)[:, None] * omega  # [sin, cos] of position * om_k
    table = torch.cat([angles.sin(), angles.cos()], dim=1).float()
    return torch.cat([torch.zeros(1, dim), table]).unsqueeze(0)


class TinyVideoMAE(nn.Module):
    def __init__(
        self, frames: int = 4, img_size: int = 16, tubelet: tuple[int, int, int] = (2, 4, 4), in_chans: int = 3,
        dim: int = 32, depth: int = 1, heads: int = 2, decoder_dim: int = 16, decoder_depth: int = 1,
    ) -> None:  # fmt: skip
        super().__init__()
        pt, ph, pw = tubelet
        self.tubelet = tubelet
        self.grid_size = (frames // pt, img_size // ph, img_size // pw)
        num_tubelets = self.grid_size[0] * self.grid_size[1] * self.grid_size[2]
        tubelet_dim = pt * ph * pw * in_chans
        self.patch_embed = nn.Linear(tubelet_dim, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(sincos_table(dim, num_tubelets), requires_grad=False)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio=4.0, backend="sdpa") for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, decoder_dim) * 0.02)
        self.decoder_pos_embed = nn.Parameter(sincos_table(decoder_dim, num_tubelets), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, heads, mlp_ratio=4.0, backend="sdpa") for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, tubelet_dim)

    def encode(self, visible: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Visible tubelets (B, K, t*p*p*C) at positions ids_keep (B, K) -> latent (B, 1+K, dim), cls row first."""
        pos = self.pos_embed[0, 1:][ids_keep]  # (B, K, dim): each visible tubelet's position
        x = self.patch_embed(visible) + pos
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decoder tokens (B, 1+L, decoder_dim), already unshuffled with pos embed -> pred (B, L, t*p*p*C)."""
        for block in self.decoder_blocks:
            tokens = block(tokens)
        return self.decoder_pred(self.decoder_norm(tokens))[:, 1:]


def videomae_loss(model: TinyVideoMAE, video: torch.Tensor, masking) -> torch.Tensor:
    """The VideoMAE loss with fastmae.ops for one masking draw (a MaskingResult)."""
    visible = patchify_gather(video, masking.ids_keep, model.tubelet)
    latent = model.encode(visible, masking.ids_keep)
    tokens = unshuffle_with_mask_token(
        model.decoder_embed(latent), model.mask_token, masking.ids_restore, model.decoder_pos_embed
    )
    pred = model.decode(tokens)
    return masked_mse_loss(pred, video, None, model.tubelet, mask=masking.mask, norm_pix=True)


def train_step(
    model: TinyVideoMAE, optimizer: torch.optim.Optimizer, video: torch.Tensor, generator: torch.Generator,
    mask_ratio: float = 0.75,
) -> torch.Tensor:
    """One optimiser step on a batch of clips (B, C, T, H, W); returns the (detached) loss."""
    masking = tube_masking(video.shape[0], model.grid_size, mask_ratio, generator=generator, device=video.device)
    loss = videomae_loss(model, video, masking)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def smooth_clips(batch: int, frames: int = 4, size: int = 16) -> torch.Tensor:
    """Low-frequency random clips (B, 3, T, H, W): masked tubelets are predictable from the visible ones."""
    return F.interpolate(torch.randn(batch, 3, 2, 4, 4), size=(frames, size, size), mode="trilinear")


# ----------------------------------------------------------------------------- the same step in plain PyTorch


def plain_patchify(video: torch.Tensor, tubelet: tuple[int, int, int]) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, L, t*p*p*C): tubelets row-major over (T, H, W), elements (t, i, j, c)."""
    b, c, t, h, w = video.shape
    pt, ph, pw = tubelet
    x = video.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
    x = torch.einsum("bcTtHiWj->bTHWtijc", x)
    return x.reshape(b, (t // pt) * (h // ph) * (w // pw), pt * ph * pw * c)


def plain_torch_loss(model: TinyVideoMAE, video: torch.Tensor, masking) -> torch.Tensor:
    patches = plain_patchify(video, model.tubelet)
    dim = patches.shape[-1]
    visible = torch.gather(patches, 1, masking.ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    latent = model.decoder_embed(model.encode(visible, masking.ids_keep))
    batch, num_tubelets = masking.mask.shape
    mask_tokens = model.mask_token.expand(batch, num_tubelets - masking.num_keep, -1)
    shuffled = torch.cat([latent[:, 1:], mask_tokens], dim=1)
    restored = torch.gather(shuffled, 1, masking.ids_restore.unsqueeze(-1).expand(-1, -1, latent.shape[-1]))
    tokens = torch.cat([latent[:, :1], restored], dim=1) + model.decoder_pos_embed
    pred = model.decode(tokens)
    target = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6) ** 0.5
    per_tubelet = ((pred - target) ** 2).mean(-1)
    return (per_tubelet * masking.mask).sum() / masking.mask.sum()


def check_against_plain_torch(model: TinyVideoMAE, video: torch.Tensor, masking) -> None:
    """Loss and every parameter gradient of the fastmae step match the plain-torch step."""
    params = [p for p in model.parameters() if p.requires_grad]
    ours = videomae_loss(model, video, masking)
    ours_grads = torch.autograd.grad(ours, params)
    plain = plain_torch_loss(model, video, masking)
    plain_grads = torch.autograd.grad(plain, params)
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-6)
    for grad, expected in zip(ours_grads, plain_grads):
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)


def test_videomae_kernels_match_plain_torch(monkeypatch) -> None:
    """The same step through the Triton kernels (FASTMAE_BACKEND=triton; CPU tensors need TRITON_INTERPRET=1)."""
    monkeypatch.setenv("FASTMAE_BACKEND", "triton")
    torch.manual_seed(0)
    model = TinyVideoMAE()
    masking = tube_masking(2, model.grid_size, 0.75, generator=torch.Generator().manual_seed(0))
    check_against_plain_torch(model, smooth_clips(2), masking)


def test_videomae_step_matches_plain_torch_and_learns() -> None:
    torch.manual_seed(0)
    model = TinyVideoMAE()
    video = smooth_clips(3)
    masking = tube_masking(3, model.grid_size, 0.75, generator=torch.Generator().manual_seed(0))
    assert masking.num_keep == 2 * 4  # T' = 2 slices x int(16 * 0.25) positions
    check_against_plain_torch(model, video, masking)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    losses = [float(train_step(model, optimizer, video, generator)) for _ in range(20)]
    assert sum(losses[-5:]) / 5 < 0.85 * losses[0], f"loss did not decrease: {losses[0]:.3f} -> {losses[-5:]}"


if __name__ == "__main__":
    torch.manual_seed(0)
    demo_model = TinyVideoMAE()
    demo_optimizer = torch.optim.AdamW(demo_model.parameters(), lr=3e-3)
    demo_video, demo_generator = smooth_clips(8), torch.Generator().manual_seed(0)
    for step in range(20):
        print(f"step {step:2d}  loss {float(train_step(demo_model, demo_optimizer, demo_video, demo_generator)):.4f}")
