"""A pytest plugin that counts the distinct Triton compiles a test selection would make on a GPU.

    TRITON_INTERPRET=1 pytest -p fastmae.bench.compile_count tests/test_op_unshuffle.py -k triton

On a GPU every new specialisation of a kernel is one compile (about a second or more each there), which is
what sizes a device check. Under the interpreter nothing is compiled, so this records each interpreted launch's
specialisation key the way Triton forms it (kernel, constexpr values, tensor dtypes and 16-byte alignment,
ints equal to 1 or divisible by 16, other scalars' types) and prints the number of distinct keys at the end
(``FASTMAE_COMPILE_COUNT_OUT`` names a file to write it to as JSON as well).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

_keys: set[tuple[Any, ...]] = set()


def _arg_key(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.dtype), value.data_ptr() % 16 == 0)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", value == 1, value % 16 == 0, abs(value) >= 2**31)
    if isinstance(value, float):
        return ("float",)
    return ("other", repr(value))


def specialization_key(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """The part of a launch that decides which compiled kernel it needs."""
    import inspect

    signature = inspect.signature(fn.fn)
    bound = signature.bind_partial(*args, **{k: v for k, v in kwargs.items() if k in signature.parameters})
    options = tuple(sorted((k, repr(v)) for k, v in kwargs.items() if k not in signature.parameters))
    constexprs = {p.name for p in signature.parameters.values() if "constexpr" in str(p.annotation)}
    parts = tuple((name, repr(value) if name in constexprs else _arg_key(value))
                  for name, value in bound.arguments.items())
    return (fn.fn.__qualname__, parts, options)


def pytest_configure(config: pytest.Config) -> None:
    from triton.runtime.interpreter import InterpretedFunction

    original = InterpretedFunction.run

    def counting_run(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        _keys.add(specialization_key(self, args, kwargs))
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = counting_run  # type: ignore[method-assign]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    per_kernel: dict[str, int] = {}
    for key in _keys:
        per_kernel[key[0]] = per_kernel.get(key[0], 0) + 1
    terminalreporter.write_line(f"distinct Triton compiles on a GPU: {len(_keys)} {dict(sorted(per_kernel.items()))}")
    path = os.environ.get("FASTMAE_COMPILE_COUNT_OUT")
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"compiles": len(_keys), "per_kernel": per_kernel}, handle, indent=1, sort_keys=True)
