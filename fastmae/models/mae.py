"""The fast Masked Autoencoder ViT.

Same parameters (names, shapes, order) and initialisation as :class:`fastmae.reference.MaskedAutoencoderViT`,
so state dicts move between the two and official checkpoints load with ``strict=True``. What differs is
the work done per step:

- the patch embedding runs only on the K visible patches (``patchify_gather`` then a linear layer whose
  weight is the conv weight read in patchify order), so no (N, L, D) embedding of all patches exists;
- the decoder input is built by ``unshuffle_with_mask_token`` in one pass;
- the prediction head and the loss run only on the L-K removed tokens (``masked_mse_loss``): no
  (N, L, p*p*C) prediction or target is materialised in training;
- attention through SDPA (or xformers / the explicit math), LayerNorm statistics in float32,
  optional per-block activation checkpointing or selective recomputation (``set_recompute``).

Shapes: N batch, C channels, (H, W) image, p patch size, L patches, K = int(L*(1-mask_ratio)) kept,
D encoder width, d decoder width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastmae._validation import check_images, num_kept, pair
from fastmae.models.attention import AttnBackend, resolve_attn_backend
from fastmae.models.blocks import Block, LayerNorm
from fastmae.models.configs import LAYER_NORM_EPS
from fastmae.models.layers import PatchEmbed, init_mae_weights
from fastmae.models.recompute import check_recompute, run_recomputed
from fastmae.ops import (
    masked_mse_loss,
    patchify,
    patchify_gather,
    random_masking,
    unpatchify,
    unshuffle_with_mask_token,
)


def _gather_rows(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x (N, M, W), ids (N, R) int64 -> (N, R, W); backward saves only the (expanded, stride-0) index."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class MaskedAutoencoderViT(nn.Module):
    """MAE with a ViT encoder and a light ViT decoder; official semantics, fast execution.

    forward(imgs (N, C, H, W), mask_ratio, noise (N, L) or None, return_pred)
        -> loss (float32 scalar), pred (N, L, p*p*C) or None, mask (N, L) float32 with 1 = removed.
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
        attn_backend: AttnBackend = "auto",
    ) -> None:
        super().__init__()
        img_hw = pair(img_size, "img_size")
        check_images(torch.empty(0, in_chans, *img_hw, device="meta"), (patch_size, patch_size), name="img_size")
        backend = resolve_attn_backend(attn_backend)
        self.img_size = img_hw
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.norm_pix_loss = norm_pix_loss
        self.attn_backend = backend
        self.grad_checkpointing = False
        self.recompute = "none"  # fastmae.models.recompute.RECOMPUTE_MODES

        # encoder (construction order = the reference's, so a seed draws the same values)
        self.patch_embed = PatchEmbed(img_hw, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, backend) for _ in range(depth))
        self.norm = LayerNorm(embed_dim, eps=LAYER_NORM_EPS)

        # decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, backend) for _ in range(decoder_depth)
        )
        self.decoder_norm = LayerNorm(decoder_embed_dim, eps=LAYER_NORM_EPS)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size * patch_size * in_chans, bias=True)

        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The official initialisation (same rules and order of random draws as the reference)."""
        init_mae_weights(self)

    # ---------------------------------------------------------------------------------- properties
    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def num_keep(self, mask_ratio: float) -> int:
        """K = int(L * (1 - mask_ratio)), the official rule; ValueError unless 1 <= K <= L-1."""
        return num_kept(self.num_patches, mask_ratio)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each transformer block in backward instead of keeping its activations."""
        self.grad_checkpointing = bool(enable)

    def set_recompute(self, mode: str) -> None:
        """Activation recomputation of the blocks and the head: "none", "selective" or "full" (see
        :mod:`fastmae.models.recompute`); ``set_grad_checkpointing(True)`` makes the blocks "full"."""
        self.recompute = check_recompute(mode)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C), the official patch order."""
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*C) -> (N, C, H, W)."""
        return unpatchify(x, self.patch_size, self.grid_size, self.in_chans)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights with the official / timm ViT names (cls_token, pos_embed, patch_embed.*,
        blocks.*, norm.*), as in the released ``mae_pretrain_vit_*.pth`` files."""
        encoder_prefixes = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")
        return {key: value for key, value in self.state_dict().items() if key.startswith(encoder_prefixes)}

    # ---------------------------------------------------------------------------------- pieces
    def _run_blocks(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        mode = "full" if self.grad_checkpointing else self.recompute
        for block in blocks:
            x = run_recomputed(block, x, mode)
        return x

    def _check_inputs(self, imgs: torch.Tensor) -> None:
        check_images(imgs, (self.patch_size, self.patch_size), in_chans=self.in_chans, img_size=self.img_size)

    def _with_cls(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, M, D) patch tokens (pos embed added) -> (N, 1+M, D) with cls + pos_embed[0] in front."""
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls.to(tokens.dtype), tokens], dim=1)

    def embed_visible(self, imgs: torch.Tensor, ids_keep: torch.Tensor, *, validate_ids: bool = True) -> torch.Tensor:
        """imgs (N, C, H, W), ids_keep (N, K) -> (N, K, D) patch embeddings + pos embeds of the kept patches.

        The conv weight (D, C, p, p) flattens as (c, i, j); patchify order is (i, j, c), so the linear
        layer reads it permuted. The weight stays stored as the conv weight. ``validate_ids``: as in
        :func:`fastmae.ops.patchify_gather` (False only for ids fastmae's masking made).
        """
        proj = self.patch_embed.proj
        weight = proj.weight.permute(0, 2, 3, 1).reshape(proj.weight.shape[0], -1)  # (D, p*p*C)
        patches = patchify_gather(imgs, ids_keep, [self.patch_size, self.patch_size], validate_ids=validate_ids)
        tokens = F.linear(patches, weight, proj.bias)
        pos = self.pos_embed[0, 1:, :].index_select(0, ids_keep.reshape(-1)).view(*ids_keep.shape, -1)
        return tokens + pos

    def forward_encoder(self, imgs: torch.Tensor, ids_keep: torch.Tensor, *, validate_ids: bool = True) -> torch.Tensor:
        """imgs (N, C, H, W), ids_keep (N, K) -> latent (N, 1+K, D), visible tokens in ids_keep order."""
        x = self._with_cls(self.embed_visible(imgs, ids_keep, validate_ids=validate_ids))
        return self.norm(self._run_blocks(self.blocks, x))

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """The encoder on all patches, no masking (fine-tuning, linear probing): (N, C, H, W) -> (N, 1+L, D)."""
        self._check_inputs(imgs)
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        x = self._with_cls(x)
        return self.norm(self._run_blocks(self.blocks, x))

    def forward_decoder(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, *, validate_ids: bool = True
    ) -> torch.Tensor:
        """latent (N, 1+K, D), ids_restore (N, L) -> decoder features (N, 1+L, d) before decoder_norm."""
        x = self.decoder_embed(latent)
        x = unshuffle_with_mask_token(
            x, self.mask_token, ids_restore, self.decoder_pos_embed, validate_ids=validate_ids
        )
        return self._run_blocks(self.decoder_blocks, x)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Decoder features (N, M, d) -> pixel predictions (N, M, p*p*C) (decoder_norm, decoder_pred)."""
        return self.decoder_pred(self.decoder_norm(features))

    # ---------------------------------------------------------------------------------- forward
    def forward(
        self,
        imgs: torch.Tensor,
        mask_ratio: float = 0.75,
        noise: torch.Tensor | None = None,
        return_pred: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """imgs (N, C, H, W) normalised images; noise (N, L) decides the masking (drawn U[0,1) when None).

        Returns loss (float32 scalar: MSE over removed patches), pred ((N, L, p*p*C) when
        ``return_pred`` else None) and mask (N, L), 1 = removed. No host sync; all shapes are static.
        """
        self._check_inputs(imgs)
        batch = imgs.shape[0]
        masking = random_masking(batch, self.num_patches, mask_ratio, noise=noise, device=imgs.device)
        # the masking's ids are valid by construction: no id check on the training path
        latent = self.forward_encoder(imgs, masking.ids_keep, validate_ids=False)
        features = self.forward_decoder(latent, masking.ids_restore, validate_ids=False)  # (N, 1+L, d), cls first
        ids_removed = masking.ids_shuffle[:, masking.num_keep :]  # (N, L-K), the loss's row order
        if return_pred:
            pred = self.predict(features[:, 1:, :])
            pred_removed = _gather_rows(pred, ids_removed)
        else:
            # decoder_norm and decoder_pred are per token: run them on the removed tokens only
            pred = None
            pred_removed = run_recomputed(self.predict, _gather_rows(features, ids_removed + 1), self.recompute)
        loss = masked_mse_loss(
            pred_removed, imgs, None, [self.patch_size, self.patch_size], norm_pix=self.norm_pix_loss,
            ids_removed=ids_removed, validate_ids=False,
        )
        return loss, pred, masking.mask
