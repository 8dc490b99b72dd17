"""Layers and initialisation of the fast MAE that carry the official names and numbers.

``PatchEmbed`` and ``Mlp`` hold the official parameter names (``patch_embed.proj``, ``mlp.fc1`` /
``mlp.fc2``); :func:`sincos_pos_embed` is the fixed 2-D positional table; :func:`init_mae_weights`
is the official initialisation, drawing its random numbers in the official order, so a seed builds
the same weights as :class:`fastmae.reference.MaskedAutoencoderViT` (the tests check both).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fastmae._validation import pair


class PatchEmbed(nn.Module):
    """(N, C, H, W) -> (N, L, D) by a stride-p convolution ``proj`` (the official module and names)."""

    def __init__(self, img_size: tuple[int, int], patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        gh, gw = img_size[0] // patch_size, img_size[1] // patch_size
        self.img_size, self.patch_size = img_size, (patch_size, patch_size)
        self.grid_size, self.num_patches = (gh, gw), gh * gw
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(imgs)  # (N, D, gh, gw)
        return tokens.flatten(start_dim=2).transpose(1, 2)


class Mlp(nn.Sequential):
    """(…, dim) -> (…, dim): fc1, exact (erf) GELU, fc2; the official ``mlp.fc1`` / ``mlp.fc2`` names."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)


def sincos_pos_embed(dim: int, grid_size: int | tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """The fixed (1 + gh*gw, dim) float32 table (no cls row when ``cls_token`` is False).

    Patch (h, w), row-major, gets [sin(w om), cos(w om), sin(h om), cos(h om)] with
    om_k = 10000^(-k / (dim/4)), computed in float64; the cls row is zeros.
    """
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4 for a 2-D sin-cos table, got {dim}")
    gh, gw = pair(grid_size, "grid_size")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / float(quarter))
    h, w = np.divmod(np.arange(gh * gw, dtype=np.float64), gw)  # row-major patch coordinates
    w_angles, h_angles = np.outer(w, omega), np.outer(h, omega)
    parts = [np.sin(w_angles), np.cos(w_angles), np.sin(h_angles), np.cos(h_angles)]
    if cls_token:
        parts = [np.pad(part, ((1, 0), (0, 0))) for part in parts]
    return torch.from_numpy(np.concatenate(parts, axis=1)).float()


@torch.no_grad()
def init_mae_weights(model: nn.Module) -> None:
    """The official MAE initialisation of ``model`` (an MAE with the official attribute names).

    Fixed sin-cos tables into ``pos_embed`` / ``decoder_pos_embed``; xavier-uniform on the patch
    conv seen as a (D, C*p*p) matrix; N(0, 0.02) ``cls_token`` and ``mask_token``; then every Linear
    xavier-uniform with zero bias and every LayerNorm (1, 0), in module order. The patch conv's
    bias keeps PyTorch's default init (an official quirk). Meta tensors are left as they are.
    """
    if model.pos_embed.is_meta:
        return
    for table in (model.pos_embed, model.decoder_pos_embed):
        table.copy_(sincos_pos_embed(table.shape[-1], model.grid_size).unsqueeze(0))
    conv_weight = model.patch_embed.proj.weight
    nn.init.xavier_uniform_(conv_weight.view(conv_weight.shape[0], -1))
    for token in (model.cls_token, model.mask_token):
        nn.init.normal_(token, std=0.02)
    for module in model.modules():  # the same leaf order as the official ``apply``: the same draws
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)  # the only random draw of the loop
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
        if isinstance(module, (nn.Linear, nn.LayerNorm)) and module.bias is not None:
            nn.init.zeros_(module.bias)
