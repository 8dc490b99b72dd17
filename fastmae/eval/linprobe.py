"""``fastmae linprobe``: the official linear-probe recipe on a frozen MAE encoder.

    fastmae linprobe --model vit_base_patch16 --finetune mae_pretrain_vit_base.pth \
        --data_path /data/imagenet --nb_classes 1000 --output_dir out/linprobe
    torchrun --nproc_per_node 8 -m fastmae linprobe ...     # DDP

Frozen encoder, cls-token feature, BatchNorm without affine before the linear head, LARS, blr 0.1,
no weight decay, 90 epochs with 10 warmup, effective batch 16384 (by --accum_iter unless given),
RandomResizedCrop + flip for training, resize + centre crop for evaluation.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fastmae.eval.cli import run_recipe


def main(argv: Sequence[str] | None = None) -> int:
    return run_recipe("linprobe", argv)


if __name__ == "__main__":
    sys.exit(main())
