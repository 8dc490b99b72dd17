"""``fastmae pretrain`` options: the official flag names plus fastmae's, and their resolution.

``parse_args`` only parses; ``resolve`` turns the parsed flags into concrete settings (device,
precision, compile, effective batch, lr) once the world size is known, and ``describe`` prints them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fastmae.data.epoch import LOADER_BACKENDS
from fastmae.models.attention import ATTN_BACKENDS
from fastmae.train.precision import AUTOCAST_DTYPES, PRECISIONS

LOADERS = (*LOADER_BACKENDS, "synthetic")


def build_parser() -> argparse.ArgumentParser:
    from fastmae.models.recompute import DEFAULT_RECOMPUTE, RECOMPUTE_MODES

    p = argparse.ArgumentParser(
        prog="fastmae pretrain",
        description="MAE pretraining (official main_pretrain flags, plus fastmae's speed and robustness options).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    official = p.add_argument_group("official flags (facebookresearch/mae main_pretrain.py)")
    official.add_argument("--model", default="mae_vit_large_patch16", help="model name (official or short alias)")
    official.add_argument("--batch_size", type=int, default=64, help="images per process per micro-step")
    official.add_argument("--accum_iter", type=int, default=1, help="micro-steps per optimizer step")
    official.add_argument("--epochs", type=int, default=400)
    official.add_argument("--warmup_epochs", type=float, default=40)
    official.add_argument("--blr", type=float, default=1e-3,
                          help="base lr: lr = blr * effective batch / 256 (the paper's recipe passes 1.5e-4)")
    official.add_argument("--lr", type=float, default=None, help="absolute lr (overrides --blr)")
    official.add_argument("--min_lr", type=float, default=0.0, help="floor of the cosine schedule")
    official.add_argument("--weight_decay", type=float, default=0.05)
    official.add_argument("--mask_ratio", type=float, default=0.75)
    official.add_argument("--norm_pix_loss", action="store_true", help="per-patch normalised pixel targets")
    official.add_argument("--input_size", type=int, default=None, help="default: the model's own (224 official)")
    official.add_argument("--data_path", default=None, help="dataset root (ImageFolder under DATA_PATH/train)")
    official.add_argument("--output_dir", default="./output_dir", help="checkpoints and log.txt")
    official.add_argument("--log_dir", default=None, help="TensorBoard folder (default: OUTPUT_DIR)")
    official.add_argument("--resume", default="",
                          help="checkpoint to continue from: fastmae's (exact) or an official one {model, optimizer, "
                               "epoch, scaler} (from the next epoch); 'auto': the latest in OUTPUT_DIR")
    official.add_argument("--start_epoch", type=int, default=0, help="first epoch when not resuming")
    official.add_argument("--seed", type=int, default=0)
    official.add_argument("--num_workers", type=int, default=None, help="loader workers / DALI threads")
    official.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    official.add_argument("--pin_mem", action="store_true", help="pin host batches (torch loader; DALI ignores it)")
    official.add_argument("--no_pin_mem", action="store_false", dest="pin_mem")
    official.set_defaults(pin_mem=True)
    official.add_argument("--world_size", type=int, default=1,
                          help="number of processes; the launcher's WORLD_SIZE decides (more without one: an error)")
    official.add_argument("--local_rank", "--local-rank", type=int, default=-1,
                          help="passed by torch.distributed.launch; used when LOCAL_RANK is not set")
    official.add_argument("--dist_on_itp", action="store_true",
                          help="take rank, world size and local rank from OpenMPI's OMPI_COMM_WORLD_* variables")
    official.add_argument("--dist_url", default="env://",
                          help="env:// (torchrun's MASTER_ADDR/PORT) or tcp://HOST:PORT (sets them)")

    ours = p.add_argument_group("fastmae")
    ours.add_argument("--precision", choices=PRECISIONS, default=None,
                      help="default: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU")
    ours.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                      help="torch.compile the step (default: on for CUDA, off for CPU)")
    ours.add_argument("--compile_backend", default="inductor", help="torch.compile backend (tests: aot_eager)")
    ours.add_argument("--loader", choices=LOADERS, default=None,
                      help="default: dali when installed and on CUDA, else torch; synthetic = random pixels, no I/O")
    ours.add_argument("--attn", choices=ATTN_BACKENDS, default="auto", help="attention kernel")
    ours.add_argument("--grad_checkpointing", action="store_true", help="recompute block activations in backward")
    ours.add_argument("--recompute", choices=RECOMPUTE_MODES, default=DEFAULT_RECOMPUTE,
                      help="selective: keep matmul/attention outputs, recompute LayerNorm, GELU and casts in "
                           "backward (0.57x the activations of none for ViT-L bf16; see docs/memory.md)")
    ours.add_argument("--fsdp", action="store_true", help="FSDP2 fully_shard per block (with torchrun)")
    ours.add_argument("--dist_timeout", type=float, default=600,
                      help="seconds a rank waits in a collective for the others before the run stops with an error "
                           "(a rank died or hung); keep it above the longest checkpoint save or first compile")
    ours.add_argument("--max_steps", type=int, default=None, help="stop after this many optimizer steps in total")
    ours.add_argument("--log_every", type=int, default=20, help="read loss/metrics every N optimizer steps")
    ours.add_argument("--save_every", type=int, default=0, help="checkpoint every N optimizer steps (0: per epoch)")
    ours.add_argument("--keep_last", type=int, default=2, help="checkpoints to keep")
    ours.add_argument("--max_skipped", type=int, default=20,
                      help="stop after this many non-finite-loss steps in a row")
    ours.add_argument("--synthetic_size", type=int, default=4096, help="images per epoch of --loader synthetic")
    ours.add_argument("--init_from", default="",
                      help="start from these weights (official or fastmae; full or encoder-only)")
    ours.add_argument("--no_progress", action="store_true", help="plain log lines instead of a progress bar")
    ours.add_argument("--knn_every", type=int, default=0,
                      help="k-NN monitor every N optimizer steps (cosine, k=20, T=0.07; 0: off)")
    ours.add_argument("--knn_data", default=None,
                      help="labelled ImageFolder root of the k-NN monitor (default: DATA_PATH; uses train/, val/)")
    ours.add_argument("--knn_images", type=int, default=2000, help="reference images of the k-NN monitor")
    ours.add_argument("--file_list", default=None,
                      help="train on the files of this list ('<path> <label>' lines, as scan-dataset writes)")
    ours.add_argument("--skip_list", default=None, help="leave out the files named in this list (one path a line)")
    ours.add_argument("--skip_bad", action="store_true",
                      help="replace an image that fails to decode by the next good one, logging and counting it")
    ours.add_argument("--config", default=None,
                      help="YAML or JSON file of flag values (as OUTPUT_DIR/config.yaml); command-line flags override")
    ours.add_argument("--wandb_project", default=None,
                      help="also log to Weights & Biases under this project (needs wandb installed)")
    return p


@dataclass(frozen=True)
class Settings:
    """Concrete settings derived from the flags and the world size."""

    device: torch.device
    precision: str
    compile: bool
    loader: str
    world_size: int
    effective_batch: int
    lr: float

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return AUTOCAST_DTYPES[self.precision]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from fastmae.train.config import parse_with_config

    return check_args(parse_with_config(build_parser(), argv))


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Range checks of the flag values (ValueError naming the flag); returns ``args``."""
    for name in ("batch_size", "accum_iter", "epochs", "log_every", "keep_last", "max_skipped"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("save_every", "start_epoch", "seed", "knn_every"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.input_size is not None and args.input_size < 1:
        raise ValueError(f"--input_size must be >= 1, got {args.input_size}")
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max_steps must be >= 1, got {args.max_steps}")
    if not 0.0 < args.mask_ratio < 1.0:
        raise ValueError(f"--mask_ratio must be in (0, 1), got {args.mask_ratio}")
    if not args.dist_timeout > 0:
        raise ValueError(f"--dist_timeout must be > 0 seconds, got {args.dist_timeout}")
    if args.warmup_epochs < 0:
        raise ValueError(f"--warmup_epochs must be >= 0, got {args.warmup_epochs}")
    return args


def _dali_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("nvidia.dali") is not None


def resolve(args: argparse.Namespace, world_size: int) -> Settings:
    """Fill the defaults that depend on the machine; compute the effective batch and the lr."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available")
    precision = args.precision
    if precision is None:
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs CUDA (a GradScaler on CPU buys nothing); use bf16 or fp32")
    compile_step = device.type == "cuda" if args.compile is None else bool(args.compile)
    loader = args.loader or ("dali" if device.type == "cuda" and _dali_installed() else "torch")
    if loader != "synthetic" and not (args.data_path or args.file_list):
        raise ValueError(f"--data_path is required with --loader {loader}, unless --file_list is given "
                         "(or use --loader synthetic)")
    effective_batch = args.batch_size * args.accum_iter * world_size
    lr = args.lr if args.lr is not None else args.blr * effective_batch / 256
    return Settings(device, precision, compile_step, loader, world_size, effective_batch, lr)


def describe(args: argparse.Namespace, settings: Settings, extra: dict[str, object]) -> str:
    """The resolved settings, one per line, for the start of a run."""
    lines = {
        "model": args.model,
        "device": str(settings.device),
        "world size": settings.world_size,
        "effective batch": f"{settings.effective_batch} = {args.batch_size} x accum {args.accum_iter} "
                           f"x {settings.world_size} process(es)",
        "lr": f"{settings.lr:.4g}"
              + ("" if args.lr is not None else f" = blr {args.blr:g} x {settings.effective_batch} / 256"),
        "precision": settings.precision,
        "compile": f"{settings.compile} ({args.compile_backend})" if settings.compile else "False",
        "loader": settings.loader,
        **extra,
    }
    width = max(len(k) for k in lines)
    return "\n".join(f"  {k:<{width}} : {v}" for k, v in lines.items())
