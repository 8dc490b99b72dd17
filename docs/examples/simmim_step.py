"""A SimMIM-style training step written with fastmae.ops (runnable on CPU; pytest runs ``test_*`` below).

SimMIM keeps every token: the patch embeddings of masked patches are replaced by a learned mask token,
the whole sequence goes through the encoder, and a linear head predicts the pixels of every patch; the
loss counts the masked patches only. With fastmae.ops the step is:

    masking = block_masking(B, grid, mask_ratio, generator=g)       # BEiT-style blocks, K fixed per batch
    tokens  = mask_token_blend(patch_embed(imgs), masking.mask, mask_token)   # fused select, fwd + bwd
    pred    = head(encoder(tokens))                                  # (B, L, p*p*C), every patch
    loss    = masked_mse_loss(pred, imgs, None, p, mask=masking.mask)  # patchify fused into the loss

(SimMIM's paper uses an L1 loss; fastmae's fused loss is the MAE squared error.)

Run it: ``PYTHONPATH=. python docs/examples/simmim_step.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastmae.models.blocks import Block
from fastmae.models.layers import sincos_pos_embed
from fastmae.ops import block_masking, mask_token_blend, masked_mse_loss


class TinySimMIM(nn.Module):
    """Patch embedding, mask token, a few transformer blocks and a linear pixel head."""

    def __init__(
        self, img_size: int = 16, patch_size: int = 4, in_chans: int = 3, dim: int = 32, depth: int = 2, heads: int = 2
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.patch_embed = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.mask_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        pos_embed = sincos_pos_embed(dim, self.grid_size, cls_token=False)
        self.pos_embed = nn.Parameter(pos_embed.unsqueeze(0), requires_grad=False)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio=4.0, backend="sdpa") for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, patch_size * patch_size * in_chans)

    def embed(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, dim) patch embeddings of every patch."""
        return self.patch_embed(imgs).flatten(2).transpose(1, 2)

    def predict(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, dim) tokens (masked ones already replaced) -> (B, L, p*p*C) pixel predictions."""
        x = tokens + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def simmim_loss(model: TinySimMIM, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The SimMIM loss with fastmae.ops: mask (B, L) float, 1 = masked."""
    tokens = mask_token_blend(model.embed(imgs), mask, model.mask_token)
    pred = model.predict(tokens)
    return masked_mse_loss(pred, imgs, None, model.patch_size, mask=mask)


def train_step(
    model: TinySimMIM, optimizer: torch.optim.Optimizer, imgs: torch.Tensor, generator: torch.Generator,
    mask_ratio: float = 0.6,
) -> torch.Tensor:
    """One optimiser step on a batch of normalised images; returns the (detached) loss."""
    # block masks are host-side work (usually done in the data loader); K is the same for every sample
    masking = block_masking(imgs.shape[0], model.grid_size, mask_ratio, min_block=2, generator=generator,
                            device=imgs.device)  # fmt: skip
    loss = simmim_loss(model, imgs, masking.mask)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def smooth_images(batch: int, size: int = 16) -> torch.Tensor:
    """Low-frequency random images: masked patches are predictable from their neighbours, so the loss can fall."""
    return F.interpolate(torch.randn(batch, 3, 4, 4), size=(size, size), mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------- the same step in plain PyTorch


def plain_patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C): patches row-major, elements (i, j, c)."""
    b, c, h, w = imgs.shape
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("bchiwj->bhwijc", x).reshape(b, (h // p) * (w // p), p * p * c)


def plain_torch_loss(model: TinySimMIM, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weight = mask.unsqueeze(-1)
    tokens = model.embed(imgs) * (1 - weight) + model.mask_token * weight
    per_patch = ((model.predict(tokens) - plain_patchify(imgs, model.patch_size)) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


def check_against_plain_torch(model: TinySimMIM, imgs: torch.Tensor, mask: torch.Tensor) -> None:
    """Loss and every parameter gradient of the fastmae step match the plain-torch step."""
    params = [p for p in model.parameters() if p.requires_grad]
    ours = simmim_loss(model, imgs, mask)
    ours_grads = torch.autograd.grad(ours, params)
    plain = plain_torch_loss(model, imgs, mask)
    plain_grads = torch.autograd.grad(plain, params)
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-6)
    for grad, expected in zip(ours_grads, plain_grads):
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
    assert ours_grads[1].abs().sum() > 0, "the mask token got no gradient"


def test_simmim_kernels_match_plain_torch(monkeypatch) -> None:
    """The same step through the Triton kernels (FASTMAE_BACKEND=triton; CPU tensors need TRITON_INTERPRET=1)."""
    monkeypatch.setenv("FASTMAE_BACKEND", "triton")
    torch.manual_seed(0)
    model = TinySimMIM()
    mask = block_masking(2, model.grid_size, 0.6, min_block=2, generator=torch.Generator().manual_seed(0)).mask
    check_against_plain_torch(model, smooth_images(2), mask)


def test_simmim_step_matches_plain_torch_and_learns() -> None:
    torch.manual_seed(0)
    model = TinySimMIM()
    imgs = smooth_images(4)
    mask = block_masking(4, model.grid_size, 0.6, min_block=2, generator=torch.Generator().manual_seed(0)).mask
    check_against_plain_torch(model, imgs, mask)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    losses = [float(train_step(model, optimizer, imgs, generator)) for _ in range(20)]
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0], f"loss did not decrease: {losses[0]:.3f} -> {losses[-5:]}"


if __name__ == "__main__":
    torch.manual_seed(0)
    demo_model = TinySimMIM()
    demo_optimizer = torch.optim.AdamW(demo_model.parameters(), lr=3e-3)
    demo_imgs, demo_generator = smooth_images(8), torch.Generator().manual_seed(0)
    for step in range(20):
        print(f"step {step:2d}  loss {float(train_step(demo_model, demo_optimizer, demo_imgs, demo_generator)):.4f}")
