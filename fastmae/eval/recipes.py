"""The official evaluation recipes as data: one place for every default ``fastmae linprobe`` and
``fastmae finetune`` use (see docs/eval.md for where each comes from).

Fine-tuning hyper-parameters depend on the model size; a flag left unset takes the value of the
row for ``--model`` (sizes without a published row, like ``vit_tiny``, use the ViT-B row).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastmae.models.configs import resolve_model_name

LINPROBE_EFFECTIVE_BATCH = 16384  # reached by --accum_iter when it is not given


@dataclass(frozen=True)
class FinetuneRow:
    blr: float
    layer_decay: float
    drop_path: float
    epochs: int


FINETUNE_ROWS: dict[str, FinetuneRow] = {
    "mae_vit_base_patch16_dec512d8b": FinetuneRow(blr=5e-4, layer_decay=0.65, drop_path=0.1, epochs=100),
    "mae_vit_large_patch16_dec512d8b": FinetuneRow(blr=1e-3, layer_decay=0.75, drop_path=0.2, epochs=50),
    "mae_vit_huge_patch14_dec512d8b": FinetuneRow(blr=1e-3, layer_decay=0.75, drop_path=0.3, epochs=50),
}
FINETUNE_DEFAULT_ROW = FINETUNE_ROWS["mae_vit_base_patch16_dec512d8b"]


def finetune_row(mae_model: str) -> FinetuneRow:
    """The fine-tuning row of an MAE model name (official or alias)."""
    return FINETUNE_ROWS.get(resolve_model_name(mae_model), FINETUNE_DEFAULT_ROW)


# flag -> default of the fixed (size-independent) part of each recipe
LINPROBE_DEFAULTS: dict[str, object] = {
    "batch_size": 512, "epochs": 90, "warmup_epochs": 10, "blr": 0.1, "weight_decay": 0.0, "min_lr": 0.0,
    "global_pool": False, "crop_scale_min": 0.08,
}
FINETUNE_DEFAULTS: dict[str, object] = {
    "batch_size": 32, "warmup_epochs": 5, "weight_decay": 0.05, "min_lr": 1e-6, "global_pool": True,
    "aa": "rand-m9-mstd0.5-inc1", "smoothing": 0.1, "reprob": 0.25, "mixup": 0.8, "cutmix": 1.0,
    "mixup_prob": 1.0, "mixup_switch_prob": 0.5, "crop_scale_min": 0.08,
}
ADAMW_BETAS = (0.9, 0.999)  # torch's default, as the fine-tuning recipe uses


def eval_crop_pct(input_size: int) -> float:
    """Share of the resized image the evaluation centre crop keeps: 224/256 up to 224 px, else 1."""
    return 224 / 256 if input_size <= 224 else 1.0
