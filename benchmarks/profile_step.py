"""Where a train step's time goes: torch.profiler over a few fastmae (or reference) steps.

    python benchmarks/profile_step.py --model mae_vit_base_patch16 --batch 256 --out prof/

Writes the operator table sorted by device (or CPU) time as text, and a Chrome trace
(open in chrome://tracing or Perfetto).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from fastmae.bench.providers import PROVIDERS, build_step
from fastmae.bench.timing import pick_device
from fastmae.models.configs import full_model_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--provider", default="fastmae", choices=PROVIDERS)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after warm-up)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=Path("profile"))
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    on_gpu = device.type == "cuda"
    model = args.model or ("mae_vit_base_patch16" if on_gpu else "mae_vit_test")
    cfg = full_model_config(model)
    size = cfg["img_size"]
    height, width = (size, size) if isinstance(size, int) else size
    imgs = torch.randn(args.batch or (256 if on_gpu else 4), cfg["in_chans"], height, width, device=device)
    step = build_step(args.provider, model, device, compile_model=on_gpu if args.compile is None else args.compile).step

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities, schedule=schedule(wait=1, warmup=2, active=args.steps)) as prof:
        for _ in range(3 + args.steps):
            step(imgs)
            prof.step()
    args.out.mkdir(parents=True, exist_ok=True)
    sort_by = "cuda_time_total" if on_gpu else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=40)
    stem = f"profile_{args.provider}_{model}"
    (args.out / f"{stem}.txt").write_text(table)
    prof.export_chrome_trace(str(args.out / f"{stem}.trace.json"))
    print(table)
    print(f"wrote {args.out / stem}.txt and .trace.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
