"""The classifier evaluated on a pretrained MAE encoder: a ViT with the official fine-tuning names.

Model names follow the official evaluation scripts: ``vit_base_patch16``, ``vit_large_patch16``,
``vit_huge_patch14``, and by the same rule the encoders of our smaller MAE models (``vit_tiny``,
``vit_test``): ``vit_X`` is the encoder of ``mae_vit_X``. State-dict names are those of the encoder
(``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.*``, ``norm.*``) plus ``fc_norm.*``
(global pooling) and ``head.*``; a linear-probe head is ``head.0`` (BatchNorm without affine) and
``head.1`` (the linear layer).

Shapes: N batch, C channels, (H, W) image, L patches, D width, K classes.
"""

from __future__ import annotations

import torch
from torch import nn

from fastmae.eval.drop_path import drop_path, drop_path_rates
from fastmae.models import configs, create_model
from fastmae.models.blocks import Block, LayerNorm
from fastmae.models.layers import PatchEmbed


def encoder_weights_for(classifier: nn.Module, encoder: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder tensors ``classifier`` has a place for (``norm.*`` is dropped under global pooling)."""
    own = classifier.state_dict()
    return {k: v for k, v in encoder.items() if k in own}


def mae_name(model: str) -> str:
    """``vit_base_patch16`` -> ``mae_vit_base_patch16`` (checked against the model registry)."""
    if not model.startswith("vit_"):
        raise ValueError(f"--model {model!r}: expected an encoder name such as vit_base_patch16, vit_large_patch16, "
                         f"vit_huge_patch14 or vit_tiny (the encoder of mae_vit_tiny)")
    name = "mae_" + model
    try:
        configs.resolve_model_name(name)
    except ValueError:
        known = sorted(n[4:] for n in (*configs.MODEL_CONFIGS, *configs.MODEL_ALIASES))
        raise ValueError(f"--model {model!r}: unknown encoder; known: {', '.join(known)}") from None
    return name


class DropPathBlock(Block):
    """The encoder block (same names and maths) with stochastic depth on both residual branches."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, backend: str, drop_prob: float) -> None:
        super().__init__(dim, num_heads, mlp_ratio, backend)
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_prob, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_prob, self.training)


class VisionTransformer(nn.Module):
    """ViT classifier: patch embed + pos embed + cls token, blocks, pooling, head.

    forward(imgs (N, C, H, W)) -> logits (N, K). ``global_pool``: mean of the patch tokens through
    ``fc_norm`` (the encoder's final ``norm`` is then not used); otherwise the cls token after ``norm``.
    ``linear_probe``: the head is BatchNorm1d without affine (eps 1e-6) then Linear.
    Built by :func:`build_classifier`, whose encoder starts at the MAE's own random init.
    """

    def __init__(self, *, img_size: tuple[int, int], patch_size: int, in_chans: int, embed_dim: int, depth: int,
                 num_heads: int, mlp_ratio: float, num_classes: int, global_pool: bool, drop_path_rate: float,
                 linear_probe: bool, attn_backend: str) -> None:
        super().__init__()
        self.global_pool = global_pool
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.blocks = nn.ModuleList(DropPathBlock(embed_dim, num_heads, mlp_ratio, attn_backend, rate)
                                    for rate in drop_path_rates(drop_path_rate, depth))
        # one final norm: the encoder's ``norm`` on the cls token, or ``fc_norm`` on the pooled tokens (an
        # unused ``norm`` would be a parameter without a gradient, which DDP rejects)
        self.norm = None if global_pool else LayerNorm(embed_dim, eps=configs.LAYER_NORM_EPS)
        self.fc_norm = LayerNorm(embed_dim, eps=configs.LAYER_NORM_EPS) if global_pool else None
        linear = nn.Linear(embed_dim, num_classes)
        self.head = nn.Sequential(nn.BatchNorm1d(embed_dim, affine=False, eps=1e-6), linear) if linear_probe \
            else linear

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def linear(self) -> nn.Linear:
        """The head's linear layer (with or without the BatchNorm in front)."""
        return self.head[1] if isinstance(self.head, nn.Sequential) else self.head

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> the pooled feature (N, D) the head reads."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls.to(x.dtype), x], dim=1)
        for block in self.blocks:
            x = block(x)
        if self.fc_norm is not None:
            return self.fc_norm(x[:, 1:, :].mean(dim=1))
        return self.norm(x[:, 0])  # LayerNorm is per token: only the cls row is needed

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(imgs))


def build_classifier(model: str, num_classes: int, *, img_size: int | None = None, global_pool: bool = True,
                     drop_path_rate: float = 0.0, linear_probe: bool = False,
                     attn_backend: str = "auto") -> VisionTransformer:
    """The classifier for encoder ``model`` (``vit_base_patch16``, ...) with ``num_classes`` outputs.

    Its encoder holds the weights a fresh ``mae_vit_*`` gets from the current torch seed (the MAE
    init: sin-cos pos embed, xavier linears), so with the pretraining seed it is exactly the
    encoder pretraining started from. The head follows the official recipes: linear probe weight
    trunc-normal std 0.01, fine-tuning std 2e-5; bias 0.
    """
    if num_classes < 1:
        raise ValueError(f"--nb_classes must be >= 1, got {num_classes}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"--drop_path must be in [0, 1), got {drop_path_rate}")
    overrides: dict[str, object] = {"attn_backend": attn_backend}
    if img_size is not None:
        overrides["img_size"] = img_size
    mae = create_model(mae_name(model), **overrides)
    classifier = VisionTransformer(
        img_size=mae.img_size, patch_size=mae.patch_size, in_chans=mae.in_chans,
        embed_dim=mae.cls_token.shape[-1], depth=len(mae.blocks), num_heads=mae.blocks[0].attn.num_heads,
        mlp_ratio=mae.blocks[0].mlp.fc1.out_features / mae.cls_token.shape[-1], num_classes=num_classes,
        global_pool=global_pool, drop_path_rate=drop_path_rate, linear_probe=linear_probe,
        attn_backend=mae.attn_backend)
    classifier.load_state_dict(encoder_weights_for(classifier, mae.encoder_state_dict()), strict=False)
    nn.init.trunc_normal_(classifier.linear.weight, std=0.01 if linear_probe else 2e-5)
    nn.init.zeros_(classifier.linear.bias)
    return classifier
