"""The ``fastmae`` command line.

Each subcommand lives in the module that owns its job and exposes ``main(argv)``;
this dispatcher imports that module only when its subcommand runs, so
``fastmae --help`` stays fast and light.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fastmae._version import __version__

# name -> (module exposing ``main(argv) -> int``, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("fastmae.train.pretrain", "pretrain an MAE (official flag names)"),
    "linprobe": ("fastmae.eval.linprobe", "linear probe of a pretrained encoder (official main_linprobe flags)"),
    "finetune": ("fastmae.eval.finetune", "fine-tune a pretrained encoder (official main_finetune flags)"),
    "visualize": ("fastmae.train.visualize", "write masked | reconstruction | original triplets"),
    "scan-dataset": ("fastmae.data.scan", "check every image of a dataset and write a clean file list"),
    "make-dataset": ("fastmae.data.synthetic", "write the embedded synthetic ImageFolder dataset"),
    "convert": ("fastmae.convert", "convert MAE weights between the fastmae/official, HF ViTMAE and timm layouts"),
    "bench": ("fastmae.bench.cli", "run the standard train-step comparison against the reference"),
    "memory": ("fastmae.bench.memory_cli", "activation memory of a training step by category, and what fits a GPU"),
    "info": ("fastmae.info", "print versions and which op backends are available and chosen"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastmae",
        description="Fast Masked Autoencoder pretraining of Vision Transformers.",
        epilog="Run 'fastmae COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"fastmae {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="show the full traceback of an error (as FASTMAE_DEBUG=1 does)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand. A user's mistake (see fastmae.errors) ends in one line on stderr and exit 2;
    any other exception is a bug and keeps its traceback, as does every error with --verbose or
    FASTMAE_DEBUG=1."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = bool(args) and args[0] == "--verbose"
    args = args[verbose:]
    parser = build_parser()
    if not args or args[0] not in SUBCOMMANDS:
        parser.parse_args(args)  # handles --help / --version / unknown commands
        parser.print_help()
        return 2
    module = importlib.import_module(SUBCOMMANDS[args[0]][0])
    from fastmae.errors import USER_ERRORS, one_line

    try:
        return int(module.main(args[1:]) or 0)
    except USER_ERRORS as error:
        from fastmae.ops._backend import debug_checks_enabled

        if verbose or debug_checks_enabled():
            raise
        print(f"fastmae {args[0]}: error: {one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
