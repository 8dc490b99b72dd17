"""What ``fastmae linprobe`` and ``fastmae finetune`` run: parse, train, report errors without a traceback."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def run_recipe(recipe: str, argv: Sequence[str] | None) -> int:
    from fastmae.eval.args import parse_args
    from fastmae.eval.trainer import run
    from fastmae.train.distributed import ProcessGroupError
    from fastmae.train.step import NonFiniteLossError

    try:
        run(parse_args(recipe, argv))
    except (ValueError, FileNotFoundError) as error:
        print(f"fastmae {recipe}: error: {error}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, ProcessGroupError) as error:
        print(f"fastmae {recipe}: stopped: {error}", file=sys.stderr)
        return 1
    return 0
