"""The kernel report: every Triton launch of the training steps, compiled for sm_80 and sm_90 on a CPU machine.

    python -m fastmae.bench.kernel_report [--out-dir benchmarks/results] [--arch 80 90] [--tiny]

Captures the launches (:mod:`fastmae.bench.kernel_workloads`: the launchers run on meta tensors, nothing is
launched), specialises each with Triton's own binder, compiles it with ``triton.compile`` for each target
(PTX and cubin by the ptxas the triton wheel carries) and reads, per distinct compiled kernel:

- registers, stack and local memory per thread (``cuobjdump --dump-resource-usage``), shared memory and warps
  (the compiled metadata);
- spills: local memory, or any local load/store (``LDL``/``STL``) in the SASS;
- global load and store instructions by width in bits (``LDG``/``STG`` in ``cuobjdump -sass``; static counts);
- per launch: programs launched and the bytes it must move (each element it has to read or write, once).

Writes ``kernel_report-triton<version>.json`` and ``.md`` and exits 1 when a kernel fails to compile, spills,
or takes more than :data:`REGISTER_BUDGET` registers (docs/ops.md states the budget). Needs no GPU and no CUDA
install: only the triton wheel. ``TRITON_INTERPRET`` must be unset (interpreted kernels cannot be compiled).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastmae.bench.triton_capture import Launch

REGISTER_BUDGET = 128  # registers per thread, every kernel, both targets; no spills
ARCHS = (80, 90)


@dataclass
class CompiledKernel:
    """What the compiler made of one specialisation on one target."""

    kernel: str
    arch: int
    constexprs: dict[str, Any]
    num_warps: int | None = None
    registers: int | None = None
    stack_bytes: int | None = None
    local_bytes: int | None = None
    shared_bytes: int | None = None
    local_ops: int | None = None  # LDL + STL in the SASS
    global_loads: dict[str, int] = field(default_factory=dict)  # width in bits -> instructions
    global_stores: dict[str, int] = field(default_factory=dict)
    compile_s: float | None = None
    error: str | None = None
    launches: list[dict[str, Any]] = field(default_factory=list)  # workload, grid, programs, bytes

    @property
    def spills(self) -> bool:
        return bool(self.local_bytes or self.stack_bytes or self.local_ops)

    def problems(self) -> list[str]:
        """Why this kernel fails the report (empty when it passes)."""
        if self.error is not None:
            return [f"compile error: {self.error.splitlines()[-1] if self.error else ''}"]
        found = []
        if self.spills:
            found.append(f"spills (local {self.local_bytes} B, stack {self.stack_bytes} B, {self.local_ops} LDL/STL)")
        if self.registers is not None and self.registers > REGISTER_BUDGET:
            found.append(f"{self.registers} registers > budget {REGISTER_BUDGET}")
        return found


# ----------------------------------------------------------------------------- bytes a launch must move


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _elements(tensor: torch.Tensor, count: int) -> int:
    return count * tensor.element_size()


def launch_bytes(launch: Launch) -> int:
    """Bytes ``launch`` must read plus write: each element it needs, once (gathers count only what they touch)."""
    a = launch.bound()
    c = launch.kwargs
    name = launch.name
    if name == "_gather_kernel":
        if c["SCATTER"]:  # read the patch gradient and ids, write the visible pixels
            grad = a["src_ptr"]
            return _nbytes(grad) + _elements(a["dst_ptr"], grad.numel()) + _nbytes(a["ids_ptr"])
        out = a["dst_ptr"]  # read the visible pixels and the ids, write the patches
        return _elements(a["src_ptr"], out.numel()) + _nbytes(out) + _nbytes(a["ids_ptr"])
    if name == "_unshuffle_fwd_kernel":
        out = a["out_ptr"]
        pos = _nbytes(a["pos_ptr"]) if c["HAS_POS"] else 0
        return _nbytes(a["x_ptr"]) + _nbytes(a["mask_ptr"]) + _nbytes(a["ids_ptr"]) + pos + _nbytes(out)
    if name == "_unshuffle_bwd_kernel":
        total = _nbytes(a["grad_ptr"]) + _nbytes(a["ids_ptr"])
        for flag, arg in (("NEED_X", "grad_x_ptr"), ("NEED_MASK", "mask_partial_ptr"), ("NEED_POS", "pos_partial_ptr")):
            total += _nbytes(a[arg]) if c[flag] else 0
        return total
    if name in ("_loss_fwd_kernel", "_loss_bwd_kernel"):
        pred = a["pred_ptr"]
        rows = pred.shape[0] * pred.shape[1]  # every pred row (a mask of zeros skips rows: an upper bound then)
        total = _nbytes(pred) + _elements(a["src_ptr"], pred.numel())
        total += (rows * 8 if c["HAS_IDS"] else 0) + (_nbytes(a["mask_ptr"]) if c["HAS_MASK"] else 0)
        if name == "_loss_fwd_kernel":
            return total + _nbytes(a["partial_ptr"])
        total += _nbytes(a["grad_pred_ptr"])
        return total + (_elements(a["grad_src_ptr"], pred.numel()) if c["SOURCE_GRAD"] else 0)
    if name == "_blend_kernel":
        return _nbytes(a["x_ptr"]) + _nbytes(a["mask_ptr"]) + _nbytes(a["token_ptr"]) + _nbytes(a["out_ptr"])
    if name == "_blend_backward_kernel":
        return _nbytes(a["grad_ptr"]) + _nbytes(a["mask_ptr"]) + _nbytes(a["grad_x_ptr"]) + _nbytes(a["partial_ptr"])
    if name == "_sum_partials_kernel":
        return _nbytes(a["partial_ptr"]) + _nbytes(a["out_ptr"])
    raise KeyError(f"kernel_report.launch_bytes does not know kernel {name}: add its byte count")


# ----------------------------------------------------------------------------- compiled-code analysis


def _nvidia_tool(name: str) -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the triton wheel should carry {name}")
    return str(path)


_RESOURCE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
_WIDTHS = {"128": "128", "64": "64", "U16": "16", "S16": "16", "U8": "8", "S8": "8"}


def _width(opcode: str) -> str:
    """Access width in bits of an LDG/STG opcode such as ``LDG.E.128.CONSTANT`` (no width suffix: 32)."""
    for part in opcode.split(".")[1:]:
        if part in _WIDTHS:
            return _WIDTHS[part]
    return "32"


def analyse_cubin(cubin: bytes, result: CompiledKernel) -> None:
    """Fill registers, stack, local memory and the load/store widths of ``result`` from the cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        usage = subprocess.run([_nvidia_tool("cuobjdump"), "--dump-resource-usage", handle.name],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([_nvidia_tool("cuobjdump"), "-sass", handle.name],
                              capture_output=True, text=True, check=True).stdout
    match = _RESOURCE.search(usage)
    if match is None:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{usage}")
    result.registers, result.stack_bytes, _, result.local_bytes = (int(g) for g in match.groups())
    opcodes = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", sass)
    result.global_loads = dict(Counter(_width(op) for op in opcodes if op.startswith("LDG")))
    result.global_stores = dict(Counter(_width(op) for op in opcodes if op.startswith("STG")))
    result.local_ops = sum(op.startswith(("LDL", "STL")) for op in opcodes)


def _key(source: Any, options: dict[str, Any], arch: int) -> str:
    return json.dumps([source.fn.fn.__qualname__, source.signature, repr(source.constants), repr(source.attrs),
                       sorted((k, repr(v)) for k, v in options.items()), arch])


def _constexprs(launch: Launch) -> dict[str, Any]:
    return {k: v for k, v in launch.kwargs.items() if isinstance(v, (bool, int, str))}


def compile_launches(launches: Sequence[Launch], archs: Sequence[int] = ARCHS) -> list[CompiledKernel]:
    """Compile every distinct specialisation once per target; each result lists the launches it serves."""
    import triton

    compiled: dict[str, CompiledKernel] = {}
    for arch in archs:
        for launch in launches:
            source, target, options = launch.compile_source(arch)
            key = _key(source, options, arch)
            result = compiled.get(key)
            if result is None:
                result = compiled[key] = CompiledKernel(launch.name, arch, _constexprs(launch))
                start = time.perf_counter()
                try:
                    kernel = triton.compile(source, target=target, options=options)
                    result.num_warps = kernel.metadata.num_warps
                    result.shared_bytes = kernel.metadata.shared
                    analyse_cubin(kernel.asm["cubin"], result)
                except Exception as error:  # a compile error is a finding of the report, not a crash
                    result.error = f"{type(error).__name__}: {error}"
                result.compile_s = round(time.perf_counter() - start, 2)
            result.launches.append({"workload": launch.label, "grid": list(launch.grid),
                                    "programs": launch.programs, "bytes": launch_bytes(launch)})
    return list(compiled.values())


# ----------------------------------------------------------------------------- output


def _widths(counts: dict[str, int]) -> str:
    return " ".join(f"{n}x{w}" for w, n in sorted(counts.items(), key=lambda item: -int(item[0]))) or "-"


def markdown(results: Sequence[CompiledKernel], header: dict[str, Any]) -> str:
    lines = [
        f"# Kernel report (triton {header['triton']}, torch {header['torch']}, commit {header['git_commit']})",
        "",
        f"{header['date']}; {header['command']}. Compiled on a CPU machine for each target; no GPU ran anything.",
        f"Budget: at most {REGISTER_BUDGET} registers per thread, no spills. Loads/stores: static SASS "
        "instruction counts as count x width in bits. Bytes: what each launch must read and write, once.",
        "",
        "| kernel | sm | constexprs | warps | regs | spill | smem B | global loads | global stores | workload: "
        "programs, MB | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        consts = ", ".join(f"{k}={v}" for k, v in r.constexprs.items())
        uses = "; ".join(f"{u['workload']}: {u['programs']}, {u['bytes'] / 1e6:.1f}" for u in r.launches)
        status = "; ".join(r.problems()) or "ok"
        lines.append(
            f"| {r.kernel} | {r.arch} | {consts} | {r.num_warps or '-'} | {r.registers or '-'} | "
            f"{'yes' if r.spills else 'no'} | {r.shared_bytes if r.shared_bytes is not None else '-'} | "
            f"{_widths(r.global_loads)} | {_widths(r.global_stores)} | {uses} | {status} |"
        )
    return "\n".join(lines) + "\n"


def run(archs: Sequence[int] = ARCHS, tiny: bool = False) -> tuple[list[CompiledKernel], dict[str, Any]]:
    from fastmae.bench.kernel_workloads import capture, tiny_workloads, training_workloads
    from fastmae.bench.record import environment

    header = environment(torch.device("cpu"))
    launches = capture(tiny_workloads() if tiny else training_workloads())
    start = time.perf_counter()
    results = compile_launches(launches, archs)
    header.update({"archs": list(archs), "launches": len(launches), "compiles": len(results),
                   "compile_s": round(time.perf_counter() - start, 1), "register_budget": REGISTER_BUDGET})
    return results, header


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastmae.bench.kernel_report", description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="write kernel_report-triton<version>.json/.md there (default: print only)")
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), help="compute capabilities (80 90)")
    parser.add_argument("--tiny", action="store_true", help="the small shapes of the device check's dry run")
    args = parser.parse_args(argv)
    results, header = run(args.arch, args.tiny)
    table = markdown(results, header)
    print(table)
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        stem = args.out_dir / f"kernel_report-triton{header['triton']}"
        payload = {**header, "kernels": [{**asdict(r), "problems": r.problems()} for r in results]}
        Path(f"{stem}.json").write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
        Path(f"{stem}.md").write_text(table)
        print(f"wrote {stem}.json and .md")
    failed = [(r, p) for r in results for p in r.problems()]
    for r, problem in failed:
        print(f"FAIL {r.kernel} sm_{r.arch} {r.constexprs}: {problem}", file=sys.stderr)
    print(f"{header['compiles']} compiles of {header['launches']} launches in {header['compile_s']} s; "
          f"{len(failed)} problems", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
