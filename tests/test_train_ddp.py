"""DDP on 2 CPU processes (gloo) gives the weights of one process on the combined batch.

Both runs take 3 optimizer steps of 2 accumulated micro-steps (so DDP's no_sync path runs) with the
same per-sample masking noise: each rank's noise is its slice of the global draw.
"""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastmae.models import create_model
from fastmae.train.distributed import World, wrap_model
from fastmae.train.optim import build_optimizer, set_lr
from fastmae.train.step import TrainStep

GLOBAL_BATCH = 6


def global_batch(step: int, micro_step: int, size: int) -> torch.Tensor:
    return torch.randn(size, 3, 16, 16, generator=torch.Generator().manual_seed(1000 * step + micro_step))


def count_graphs(gm, example_inputs):
    """A torch.compile backend: aot_eager, counting the graphs it is given in ``GRAPHS``."""
    GRAPHS.append(gm)
    return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)


GRAPHS: list = []


def train(rank: int, world_size: int, steps: int, accum: int, compile: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)  # the same initial weights everywhere
    model = create_model("mae_vit_test")
    wrapped = wrap_model(model, World(rank, rank, world_size), fsdp=False, param_dtype=None)
    assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel) == (world_size > 1)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    for group in optimizer.param_groups:
        # AdamW's update m / (sqrt(v) + eps) blows fp32 round-off in near-zero gradients (the key bias's is
        # exactly 0) up to lr-sized noise at eps 1e-8; a larger eps keeps the update proportional to the
        # gradient, so the comparison measures DDP's averaging rather than that amplification
        group["eps"] = 1e-3
    step = TrainStep(wrapped, optimizer, num_patches=model.num_patches, mask_ratio=0.75, accum_iter=accum,
                     device=torch.device("cpu"), autocast_dtype=None, compile=compile,
                     compile_backend=count_graphs, seed=5, rank=rank, world_size=world_size)
    for s in range(steps):
        set_lr(optimizer, 1e-3 * (s + 1))
        per_process = GLOBAL_BATCH // world_size
        rows = slice(rank * per_process, (rank + 1) * per_process)
        step(s, [global_batch(s, m, GLOBAL_BATCH)[rows] for m in range(accum)])
    return model


def ddp_worker(rank: int, world_size: int, steps: int, accum: int, compile: bool, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        model = train(rank, world_size, steps, accum, compile)
        # compiled: DDP's no_sync on the inner micro-steps and the changing lr must not recompile
        assert len(GRAPHS) == (1 if compile else 0), f"{len(GRAPHS)} graphs"
        torch.save(model.state_dict(), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_ddp_two_processes_match_one_process_on_the_combined_batch(compile, tmp_path):
    out = str(tmp_path / "weights")
    steps, accum = 3, 2
    mp.spawn(ddp_worker, args=(2, steps, accum, compile, str(tmp_path / "store"), out), nprocs=2, join=True)
    single = train(0, 1, steps, accum).state_dict()
    torch.manual_seed(0)
    initial = create_model("mae_vit_test").state_dict()
    for rank in range(2):
        distributed = torch.load(f"{out}.{rank}", weights_only=True)
        for name, expected in single.items():
            got = distributed[name]
            scale = expected.abs().max().clamp_min(1e-12)
            assert (got - expected).abs().max() <= 1e-6 * scale, f"rank {rank}: {name} differs"
    assert not torch.equal(single["blocks.0.attn.qkv.weight"], initial["blocks.0.attn.qkv.weight"])  # it trained
