"""Plain-PyTorch Masked Autoencoder with the official semantics.

This module is fastmae's test oracle and the benchmark baseline. It re-implements the
behaviour described in docs/mae.md (the published MAE and its official PyTorch
release) for clarity, not speed: every step of the algorithm is spelled out, with the
official parameter names, shapes, order and initialisation, so its state dicts load
into and from official checkpoints and fastmae's own model.

Shapes: N batch, C channels, (H, W) image, p patch size, (gh, gw) = (H/p, W/p) patch
grid, L = gh*gw patches, K = int(L*(1-mask_ratio)) kept, D encoder width, d decoder
width.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastmae._validation import check_images, check_mask_ratio, check_noise, num_kept, pair

AttnImpl = Literal["math", "sdpa"]
LAYER_NORM_EPS = 1e-6
NORM_PIX_EPS = 1e-6


# --------------------------------------------------------------------------------------
# Fixed 2-D sin-cos positional embeddings
# --------------------------------------------------------------------------------------
def sincos_1d(embed_dim: int, positions: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, embed_dim) = [sin(pos*om), cos(pos*om)], om_k = 10000^(-k/(embed_dim/2))."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even for 1-D sin-cos embeddings, got {embed_dim}")
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0))
    angles = np.outer(positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d_pos_embed(embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """(1 + gh*gw, embed_dim) float32 table; row 0 (cls) is zeros, rows 1.. are patches row-major.

    Each patch row is [sin(w*om), cos(w*om), sin(h*om), cos(h*om)] (the column index first,
    as the official code lays it out).
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 for 2-D sin-cos embeddings, got {embed_dim}")
    gh, gw = pair(grid_size, "grid_size")
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")  # (gh, gw) each, row-major
    table = np.concatenate([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], axis=1)
    if cls_token:
        table = np.concatenate([np.zeros((1, embed_dim)), table], axis=0)
    return torch.from_numpy(table).float()


# --------------------------------------------------------------------------------------
# Patchify and masking
# --------------------------------------------------------------------------------------
def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, p*p*C); patches row-major, element (i*p + j)*C + c."""
    n, c, h, w = imgs.shape
    p = patch_size
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, patch_size: int, grid_size: tuple[int, int], in_chans: int = 3) -> torch.Tensor:
    """(N, L, p*p*C) -> (N, C, gh*p, gw*p); the exact inverse of :func:`patchify`."""
    gh, gw = grid_size
    p = patch_size
    n = x.shape[0]
    x = x.reshape(n, gh, gw, p, p, in_chans)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, in_chans, gh * p, gw * p)


def random_masking(
    x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the K tokens with the smallest noise, in shuffled order.

    x: (N, L, D) -> x_masked (N, K, D), mask (N, L) float with 1 = removed, ids_restore (N, L).
    """
    n, length, dim = x.shape
    keep = num_kept(length, mask_ratio)
    if noise is None:
        noise = torch.rand(n, length, device=x.device)
    check_noise(noise, n, length, x.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(n, length, device=x.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_masked, mask, ids_restore


def mae_loss(
    imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch_size: int, norm_pix_loss: bool
) -> torch.Tensor:
    """Mean squared error per patch, averaged over removed patches only.

    imgs (N, C, H, W), pred (N, L, p*p*C), mask (N, L) with 1 = removed -> scalar.
    """
    target = patchify(imgs, patch_size)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased, as in the official code
        target = (target - mean) / (var + NORM_PIX_EPS) ** 0.5
    loss = ((pred - target) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


# --------------------------------------------------------------------------------------
# Transformer pieces (timm 0.3.2 semantics, official names)
# --------------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    """A stride-p convolution: (N, C, H, W) -> (N, L, D)."""

    def __init__(self, img_size: tuple[int, int], patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention; qkv rows are [q | k | v], each head's rows contiguous."""

    def __init__(self, dim: int, num_heads: int, attn_impl: AttnImpl = "math") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        if attn_impl not in ("math", "sdpa"):
            raise ValueError(f"attn_impl must be 'math' or 'sdpa', got {attn_impl!r}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.attn_impl = attn_impl
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (N, heads, L, hd) each
        if self.attn_impl == "sdpa":
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(n, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, attn_impl: AttnImpl = "math") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads, attn_impl)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------
class MaskedAutoencoderViT(nn.Module):
    """MAE with a ViT encoder and a light ViT decoder (official semantics).

    forward(imgs (N, C, H, W), mask_ratio, noise (N, L) or None)
        -> loss (scalar), pred (N, L, p*p*C), mask (N, L) with 1 = removed.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
        attn_impl: AttnImpl = "math",
    ) -> None:
        super().__init__()
        img_hw = pair(img_size, "img_size")
        check_images(torch.empty(0, in_chans, *img_hw, device="meta"), (patch_size, patch_size), name="img_size")
        self.img_size = img_hw
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.norm_pix_loss = norm_pix_loss

        # encoder
        self.patch_embed = PatchEmbed(img_hw, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, attn_impl) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)

        # decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, attn_impl) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=LAYER_NORM_EPS)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size * patch_size * in_chans, bias=True)

        self.initialize_weights()

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def initialize_weights(self) -> None:
        """The official init, quirks included (the conv bias keeps PyTorch's default init)."""
        if self.pos_embed.is_meta:
            return
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d_pos_embed(self.pos_embed.shape[-1], self.grid_size).unsqueeze(0))
            self.decoder_pos_embed.copy_(
                sincos_2d_pos_embed(self.decoder_pos_embed.shape[-1], self.grid_size).unsqueeze(0)
            )
        weight = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_module)

    @staticmethod
    def _init_module(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(x, self.patch_size, self.grid_size, self.in_chans)

    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> latent (N, 1+K, D), mask (N, L), ids_restore (N, L)."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = random_masking(x, mask_ratio, noise)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (N, 1+K, D), ids_restore (N, L) -> pred (N, L, p*p*C)."""
        x = self.decoder_embed(latent)
        n, length = ids_restore.shape
        mask_tokens = self.mask_token.expand(n, length + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens.to(x.dtype)], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:, :]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mae_loss(imgs, pred, mask, self.patch_size, self.norm_pix_loss)

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        check_images(imgs, (self.patch_size, self.patch_size), in_chans=self.in_chans, img_size=self.img_size)
        check_mask_ratio(mask_ratio)
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask


# --------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------
MODEL_CONFIGS: dict[str, dict[str, int]] = {
    "mae_vit_base_patch16_dec512d8b": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "mae_vit_large_patch16_dec512d8b": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "mae_vit_huge_patch14_dec512d8b": dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
    # small sizes for tests and the CPU demo (not official)
    "mae_vit_tiny_patch8_dec64d2b": dict(
        img_size=64, patch_size=8, embed_dim=96, depth=4, num_heads=3,
        decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4,
    ),
    "mae_vit_test_patch4": dict(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
        decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
    ),
}
MODEL_ALIASES: dict[str, str] = {
    "mae_vit_base_patch16": "mae_vit_base_patch16_dec512d8b",
    "mae_vit_large_patch16": "mae_vit_large_patch16_dec512d8b",
    "mae_vit_huge_patch14": "mae_vit_huge_patch14_dec512d8b",
    "mae_vit_tiny": "mae_vit_tiny_patch8_dec64d2b",
    "mae_vit_test": "mae_vit_test_patch4",
}


def resolve_model_name(name: str) -> str:
    """Official or short model name -> the official (canonical) name."""
    name = MODEL_ALIASES.get(name, name)
    if name not in MODEL_CONFIGS:
        known = ", ".join(sorted([*MODEL_CONFIGS, *MODEL_ALIASES]))
        raise ValueError(f"unknown model {name!r}; known models: {known}")
    return name


def model_config(name: str, **overrides: object) -> dict[str, object]:
    """The constructor keyword arguments of a named model, with overrides applied."""
    config: dict[str, object] = dict(MODEL_CONFIGS[resolve_model_name(name)])
    config.update(overrides)
    return config


def create_reference_model(name: str, **overrides: object) -> MaskedAutoencoderViT:
    """Build a reference MAE by official or short name (e.g. ``"mae_vit_base_patch16"``)."""
    return MaskedAutoencoderViT(**model_config(name, **overrides))  # type: ignore[arg-type]


def full_model_config(name: str, **overrides: object) -> dict[str, object]:
    """Every constructor argument of a named model: its config over the constructor's defaults."""
    params = inspect.signature(MaskedAutoencoderViT.__init__).parameters
    config = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    config.update(model_config(name, **overrides))
    return config


def named_factory(create: Callable[..., nn.Module], name: str, description: str) -> Callable[..., nn.Module]:
    """A factory function called ``name`` that builds ``create(name, **overrides)``."""

    def build(**overrides: object) -> nn.Module:
        return create(name, **overrides)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{description} ``{name}`` (keyword arguments override its configuration)."
    return build


def _factory(name: str) -> Callable[..., nn.Module]:
    return named_factory(create_reference_model, name, "Reference")


mae_vit_base_patch16_dec512d8b = _factory("mae_vit_base_patch16_dec512d8b")
mae_vit_large_patch16_dec512d8b = _factory("mae_vit_large_patch16_dec512d8b")
mae_vit_huge_patch14_dec512d8b = _factory("mae_vit_huge_patch14_dec512d8b")
mae_vit_tiny_patch8_dec64d2b = _factory("mae_vit_tiny_patch8_dec64d2b")
mae_vit_base_patch16 = mae_vit_base_patch16_dec512d8b
mae_vit_large_patch16 = mae_vit_large_patch16_dec512d8b
mae_vit_huge_patch14 = mae_vit_huge_patch14_dec512d8b

__all__ = [
    "MODEL_ALIASES",
    "MODEL_CONFIGS",
    "MaskedAutoencoderViT",
    "create_reference_model",
    "full_model_config",
    "mae_loss",
    "mae_vit_base_patch16",
    "mae_vit_base_patch16_dec512d8b",
    "mae_vit_huge_patch14",
    "mae_vit_huge_patch14_dec512d8b",
    "mae_vit_large_patch16",
    "mae_vit_large_patch16_dec512d8b",
    "mae_vit_tiny_patch8_dec64d2b",
    "model_config",
    "named_factory",
    "patchify",
    "random_masking",
    "resolve_model_name",
    "sincos_2d_pos_embed",
    "unpatchify",
]
