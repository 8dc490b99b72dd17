"""``fastmae linprobe`` / ``fastmae finetune`` options: the official main_linprobe.py / main_finetune.py flag
names, plus the fastmae runtime flags shared with ``fastmae pretrain`` (taken from its parser, so each
is defined once). Recipe defaults come from :mod:`fastmae.eval.recipes`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from fastmae.eval import recipes
from fastmae.eval.vit import mae_name

# flags whose definition (name, type, help) is pretrain's: paths, seed, device and the runtime options
SHARED_WITH_PRETRAIN = (
    "accum_iter", "input_size", "data_path", "output_dir", "log_dir", "resume", "start_epoch", "seed",
    "num_workers", "device", "lr", "min_lr", "precision", "compile", "compile_backend", "loader", "attn",
    "max_steps", "log_every", "save_every", "keep_last", "max_skipped", "no_progress", "dist_timeout",
)
RECIPES = ("linprobe", "finetune")


def _share_pretrain_flags(parser: argparse.ArgumentParser) -> None:
    from fastmae.train.args import build_parser as pretrain_parser

    group = parser.add_argument_group("shared with fastmae pretrain")
    for action in pretrain_parser()._actions:  # one definition of each shared flag: pretrain's
        if action.dest in SHARED_WITH_PRETRAIN:
            group._add_action(action)


def build_parser(recipe: str) -> argparse.ArgumentParser:
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    finetune = recipe == "finetune"
    p = argparse.ArgumentParser(
        prog=f"fastmae {recipe}",
        description=("Fine-tune a pretrained MAE encoder (official main_finetune.py flags and recipe)." if finetune
                     else "Linear probe of a frozen MAE encoder (official main_linprobe.py flags and recipe)."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    o = p.add_argument_group(f"official flags (main_{recipe}.py)")
    o.add_argument("--model", default="vit_large_patch16",
                   help="encoder: vit_base_patch16, vit_large_patch16, vit_huge_patch14, vit_tiny, ...")
    o.add_argument("--finetune", default="", help="pretrained weights: encoder.pth, mae_pretrain_vit_*.pth or a "
                                                 "full checkpoint")
    o.add_argument("--nb_classes", type=int, default=1000, help="classes of the head")
    o.add_argument("--batch_size", type=int, help="images per process per micro-step")
    o.add_argument("--epochs", type=int, help="default: the recipe's (finetune: by model size)")
    o.add_argument("--warmup_epochs", type=float)
    o.add_argument("--blr", type=float, help="base lr: lr = blr * effective batch / 256 (finetune: by model size)")
    o.add_argument("--weight_decay", type=float)
    o.add_argument("--global_pool", action="store_true", dest="global_pool",
                   help="mean of the patch tokens through fc_norm")
    o.add_argument("--cls_token", action="store_false", dest="global_pool", help="the cls token after norm")
    o.add_argument("--eval", action="store_true", help="only evaluate (the weights of --resume or --finetune)")
    o.add_argument("--dist_eval", action="store_true",
                   help="evaluate a shard of the val set per process and all-reduce the counts (each image once); "
                        "without it every process evaluates the whole set")
    if finetune:
        o.add_argument("--layer_decay", type=float, help="layer-wise lr decay (default: by model size)")
        o.add_argument("--drop_path", type=float, help="stochastic depth of the last block (default: by model size)")
        o.add_argument("--aa", help="RandAugment policy ('none' to disable)")
        o.add_argument("--smoothing", type=float, help="label smoothing")
        o.add_argument("--reprob", type=float, help="random erasing probability")
        o.add_argument("--mixup", type=float, help="mixup alpha (0: off)")
        o.add_argument("--cutmix", type=float, help="cutmix alpha (0: off)")
        o.add_argument("--mixup_prob", type=float, help="probability of mixing a batch")
        o.add_argument("--mixup_switch_prob", type=float, help="probability of cutmix when both are on")
    _share_pretrain_flags(p)
    p.set_defaults(**(recipes.FINETUNE_DEFAULTS if finetune else recipes.LINPROBE_DEFAULTS), recipe=recipe,
                   accum_iter=None)
    return p


def parse_args(recipe: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and fill the size-dependent recipe defaults; ValueError names a bad flag."""
    args = build_parser(recipe).parse_args(argv)
    mae_model = mae_name(args.model)
    if recipe == "finetune":
        row = recipes.finetune_row(mae_model)
        for name in ("blr", "layer_decay", "drop_path", "epochs"):
            if getattr(args, name) is None:
                setattr(args, name, getattr(row, name))
        if args.aa == "none":
            args.aa = None
    else:
        args.drop_path = 0.0
    for name in ("batch_size", "epochs", "log_every", "keep_last", "max_skipped", "nb_classes"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.accum_iter is not None and args.accum_iter < 1:
        raise ValueError(f"--accum_iter must be >= 1, got {args.accum_iter}")
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max_steps must be >= 1, got {args.max_steps}")
    if args.loader == "synthetic":
        raise ValueError("--loader synthetic has no labels: use torch or dali")
    if not args.data_path:
        raise ValueError("--data_path is required (ImageFolder: DATA_PATH/train and DATA_PATH/val)")
    if args.warmup_epochs < 0:
        raise ValueError(f"--warmup_epochs must be >= 0, got {args.warmup_epochs}")
    return args


def default_accum_iter(batch_size: int, world_size: int) -> int:
    """Micro-steps that bring the linear probe to its effective batch of 16384 (at least 1)."""
    return max(1, round(recipes.LINPROBE_EFFECTIVE_BATCH / (batch_size * world_size)))
