"""``fastmae finetune``: the official fine-tuning recipe of a pretrained MAE encoder.

    fastmae finetune --model vit_base_patch16 --finetune mae_pretrain_vit_base.pth \
        --data_path /data/imagenet --batch_size 32 --accum_iter 4 --output_dir out/finetune
    torchrun --nproc_per_node 8 -m fastmae finetune ...     # DDP

Global average pooling with fc_norm, layer-wise lr decay, drop path, AdamW, RandAugment 9/0.5,
mixup 0.8, cutmix 1.0, label smoothing 0.1, random erasing 0.25; lr, layer decay, drop path and
epochs by model size (see fastmae.eval.recipes); evaluation at the input size, crop ratio 0.875.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fastmae.eval.cli import run_recipe


def main(argv: Sequence[str] | None = None) -> int:
    return run_recipe("finetune", argv)


if __name__ == "__main__":
    sys.exit(main())
