"""Process groups and model wrapping for ``torchrun`` (env://): DDP or FSDP2.

The group's timeout is ``--dist_timeout``; :func:`collective_failures` turns a collective that failed
(a rank died or hung) into a one-line :class:`ProcessGroupError`. On gloo, DDP averages gradients with
:func:`rank_order_mean`, so a resume is bit-exact with any number of ranks.
Launched without torchrun, everything here is a no-op (one process, rank 0).
"""

# no `from __future__ import annotations`: DDP checks a comm hook's annotations as real classes

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from fastmae.train.modeling import transformer_blocks


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str, timeout_s: float) -> World:
    """Join the torchrun group (NCCL on CUDA, gloo on CPU) when WORLD_SIZE > 1 is set.

    ``timeout_s``: how long any collective waits for the other ranks before it fails (``--dist_timeout``).
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", init_method="env://",
                                timeout=timedelta(seconds=timeout_s))
    return World(rank, local_rank, size)


def process_device(device: torch.device, world: World) -> torch.device:
    """This process's device: cuda:LOCAL_RANK under torchrun on CUDA."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", world.local_rank if world.size > 1 else torch.cuda.current_device())
    return device


def wrap_model(model: nn.Module, world: World, *, fsdp: bool, param_dtype: torch.dtype | None) -> nn.Module:
    """DDP (no unused-parameter search) or FSDP2 ``fully_shard`` per transformer block, then the root."""
    if fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        for block in transformer_blocks(model):
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    if world.size == 1:
        return model
    device_ids = [model_device(model).index] if model_device(model).type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=False,
                                              gradient_as_bucket_view=True)
    if dist.get_backend() == "gloo":
        ddp.register_comm_hook(None, rank_order_mean)
    return ddp


def rank_order_mean(group: dist.ProcessGroup | None, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP comm hook (gloo): the mean of a gradient bucket summed in rank order, whatever the bucket layout.

    Gloo's ring all-reduce adds an element's contributions in an order set by its position in the
    bucket, and DDP re-packs its buckets after the first step of every process, so with 3 or more ranks
    a resumed run would differ from an uninterrupted one in the last bits. Gathering every rank's bucket
    and adding them 0, 1, 2, ... makes each element's sum independent of where it sits.
    """
    group = group or dist.group.WORLD
    flat = bucket.buffer()
    parts = [torch.empty_like(flat) for _ in range(group.size())]
    gathered = dist.all_gather(parts, flat, group=group, async_op=True).get_future()

    def mean(_: torch.futures.Future) -> torch.Tensor:
        flat.copy_(parts[0])
        for part in parts[1:]:
            flat.add_(part)
        return flat.div_(len(parts))

    return gathered.then(mean)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def all_agree(world: World, ok: bool) -> bool:
    """Whether ``ok`` holds on every rank (one all-reduce; just ``ok`` in a single process)."""
    if world.size == 1 or not dist.is_initialized():
        return ok
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([1 if ok else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


class ProcessGroupError(RuntimeError):
    """A collective failed: another rank died, lost its connection or hung past ``--dist_timeout``."""


_GLOO_SOURCE = re.compile(r"\[[^\]]*gloo[^\]]*\]\s*")  # "[.../gloo/transport/tcp/pair.cc:553] " in gloo's errors
_TORCH_DISTRIBUTED = os.path.dirname(dist.__file__)


def is_collective_failure(error: BaseException) -> bool:
    """Whether ``error`` is a failed collective: NCCL raises ``DistError``s; gloo plain RuntimeErrors, from a
    ``torch.distributed`` call (``work.wait()``) or, inside DDP's backward, naming gloo's source file."""
    if isinstance(error, dist.DistError) or _GLOO_SOURCE.search(str(error)):
        return True
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and frame.tb_frame.f_code.co_filename.startswith(_TORCH_DISTRIBUTED)


@contextlib.contextmanager
def collective_failures(world: World, timeout_s: float) -> Iterator[None]:
    """Turn a failed collective into a :class:`ProcessGroupError` whose one line says what happened and what
    to do, instead of a traceback on every surviving rank."""
    try:
        yield
    except RuntimeError as error:
        if world.size == 1 or not is_collective_failure(error):
            raise
        cause = " ".join(_GLOO_SOURCE.sub("", str(error)).split()).split(". ")[0].rstrip(".")[:240]
        raise ProcessGroupError(
            f"rank {world.rank} of {world.size}: a collective failed ({cause}): another rank died, lost its "
            f"connection or did not answer within --dist_timeout {timeout_s:g} s. Find the first rank that failed in "
            "the launcher's output (a hung one reports nothing), fix it, then continue from the last checkpoint "
            "with --resume auto"
        ) from error


def barrier(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.barrier()


def shutdown(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
