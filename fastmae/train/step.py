"""One optimizer step of MAE pretraining, with no host sync.

What happens per optimizer step (``accum_iter`` micro-steps):

* the masking noise of every micro-step is drawn outside the compiled region, from a generator
  seeded with (seed, step, micro-step), as the global (B x world, L) tensor sliced to this rank,
  so the patches a sample keeps do not depend on how the batch is split over processes;
* forward + loss run under autocast (bf16, or fp16 with a GradScaler) inside ``torch.compile``;
  AOTAutograd compiles the matching backward. The optimizer stays outside the compiled region
  (fused AdamW is already one kernel) and its lr is a device tensor, so a changing lr never
  recompiles;
* inner micro-steps run under DDP's ``no_sync`` (FSDP2: ``set_requires_gradient_sync(False)``) so
  gradients are reduced once per step;
* a non-finite loss, or a non-finite gradient under a finite loss, skips the update on the device:
  the flag (from a foreach max-abs norm of the gradients) goes to fused AdamW as ``found_inf``
  (the GradScaler mechanism), so nothing is read back. Counters of skipped steps live on the device
  and are read with the loss every ``--log_every`` steps (:meth:`TrainStep.read_metrics`);
* with ``master`` (``--weights bf16``, :mod:`fastmae.train.master_weights`) the bf16 gradients move to the
  fp32 masters before that check, AdamW updates the masters and they are rounded back into the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from fastmae.train.master_weights import MasterWeights
from fastmae.train.precision import autocast_dtype, resolve_weights


class NonFiniteLossError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss."""


def noise_seed(seed: int, step: int, micro_step: int) -> int:
    """A 63-bit generator seed for the masking noise of one micro-step (same on every rank)."""
    return hash((seed, step, micro_step)) & (2**63 - 1)


@dataclass
class StepMetrics:
    """What the host learns at a log step about the steps since the previous one."""

    losses: list[float]  # mean micro-step loss of each optimizer step, in order
    skipped_total: int  # non-finite steps since the start of the run
    longest_skip_run: int  # longest run of consecutive non-finite steps so far


class TrainStep:
    """Callable running one optimizer step on ``accum_iter`` micro-batches.

    model: the (possibly DDP/FSDP-wrapped) MAE, whose forward is (imgs, mask_ratio, noise) -> (loss, ...).
    num_patches: L of the model. rank/world_size: this process's slice of the global noise.
    master: the fp32 master weights the optimizer updates when the model holds bf16 ones (else None).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, num_patches: int, mask_ratio: float,
                 accum_iter: int, device: torch.device, autocast_dtype: torch.dtype | None, compile: bool,
                 compile_backend: str = "inductor", seed: int = 0, rank: int = 0, world_size: int = 1,
                 log_every: int = 20, master: MasterWeights | None = None) -> None:
        self.model, self.optimizer, self.master = model, optimizer, master
        self.num_patches, self.mask_ratio, self.accum_iter = num_patches, mask_ratio, accum_iter
        self.device, self.autocast_dtype = device, autocast_dtype
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.scaler = torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None
        self._generator = torch.Generator(device)
        # compile the module itself (not a function calling it): with DDP, dynamo then compiles the wrapped
        # model and splits it at gradient-bucket boundaries instead of tracing DDP's Python forward
        self._run_model = torch.compile(model, backend=compile_backend) if compile else model
        self._losses = torch.zeros(log_every, device=device)
        self._filled = 0
        self._skipped_total = torch.zeros((), dtype=torch.int64, device=device)
        self._skip_run = torch.zeros((), dtype=torch.int64, device=device)
        self._longest_skip_run = torch.zeros((), dtype=torch.int64, device=device)

    def _forward_loss(self, imgs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            loss = self._run_model(imgs, self.mask_ratio, noise)[0]
        return loss.float()

    def noise(self, step: int, micro_step: int, batch_size: int) -> torch.Tensor:
        """(batch_size, L) uniform noise: this rank's rows of the global (batch_size x world, L) draw."""
        self._generator.manual_seed(noise_seed(self.seed, step, micro_step))
        full = torch.rand(batch_size * self.world_size, self.num_patches, generator=self._generator,
                          device=self.device)
        return full[self.rank * batch_size:(self.rank + 1) * batch_size]

    def micro_step_loss(self, step: int, micro_step: int, imgs: torch.Tensor) -> torch.Tensor:
        """The float32 loss of one micro-batch: the MAE loss under this micro-step's masking noise.

        Subclasses train another objective on the same machinery (fastmae.eval's classifier step).
        """
        return self._forward_loss(imgs, self.noise(step, micro_step, imgs.shape[0]))

    def _sync_context(self, last_micro_step: bool) -> contextlib.AbstractContextManager:
        """Gradient reduction only on the last micro-step: DDP's no_sync, FSDP2's requires_gradient_sync."""
        if hasattr(self.model, "no_sync"):
            return contextlib.nullcontext() if last_micro_step else self.model.no_sync()
        if hasattr(self.model, "set_requires_gradient_sync"):
            self.model.set_requires_gradient_sync(last_micro_step)
        return contextlib.nullcontext()

    def __call__(self, step: int, micro_batches: Sequence[object]) -> None:
        """Run optimizer step number ``step`` (global, 0-based) on ``accum_iter`` micro-batches (here: images)."""
        if len(micro_batches) != self.accum_iter:
            raise ValueError(f"expected {self.accum_iter} micro-batches, got {len(micro_batches)}")
        loss_sum = torch.zeros((), device=self.device)
        for micro_step, batch in enumerate(micro_batches):
            with self._sync_context(micro_step == self.accum_iter - 1):
                loss = self.micro_step_loss(step, micro_step, batch)
                scaled = loss / self.accum_iter
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum += loss.detach()
        self._apply_update(loss_sum)
        self._losses[self._filled % self._losses.numel()] = loss_sum / self.accum_iter
        self._filled += 1

    def _nonfinite_gradients(self) -> torch.Tensor:
        """0-dim bool on the device: whether any gradient (this rank's shard under FSDP) holds inf/NaN.

        The max-abs norm of every gradient in one foreach reduction: finite for any finite gradient,
        inf or NaN otherwise; nothing is read back.
        """
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        grads = [g.to_local() if hasattr(g, "to_local") else g for g in grads]  # FSDP2: DTensor shards
        grads = [g for g in grads if g.numel()]  # a rank's FSDP2 shard can be empty (no inf-norm identity)
        if not grads:
            return torch.zeros((), dtype=torch.bool, device=self.device)
        return ~torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=float("inf"), foreach=True))

    def _apply_update(self, loss_sum: torch.Tensor) -> None:
        if self.master is not None:
            self.master.take_gradients()  # the optimizer, and the check below, see the fp32 masters
        nonfinite = ~torch.isfinite(loss_sum)
        if self.scaler is None:  # the GradScaler checks the gradients itself
            nonfinite |= self._nonfinite_gradients()
        nonfinite = nonfinite.float()
        if self.world_size > 1 and dist.is_initialized():
            # one rank's NaN makes every rank's all-reduced gradient NaN: all must skip together
            dist.all_reduce(nonfinite, op=dist.ReduceOp.MAX)
        if self.scaler is not None:
            # the scaler finds the inf/NaN gradients a non-finite loss leaves and skips by itself
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.found_inf = nonfinite
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
        if self.master is not None:
            self.master.publish()
        self.optimizer.zero_grad(set_to_none=True)
        skipped = nonfinite.long()
        self._skipped_total += skipped
        self._skip_run.add_(1).mul_(skipped)  # +1 on a skip, back to 0 on an update
        torch.maximum(self._longest_skip_run, self._skip_run, out=self._longest_skip_run)

    def read_metrics(self) -> StepMetrics:
        """Read (one host sync) the losses recorded since the last read and the skip counters."""
        count = min(self._filled, self._losses.numel())
        losses = self._losses[:count].tolist()
        self._filled = 0
        return StepMetrics(losses, int(self._skipped_total), int(self._longest_skip_run))

    def state_dict(self) -> dict[str, object]:
        state: dict[str, object] = {"skipped_total": self._skipped_total.cpu(), "skip_run": self._skip_run.cpu()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, object]) -> None:
        self._skipped_total.copy_(state["skipped_total"])
        self._skip_run.copy_(state["skip_run"])
        self._longest_skip_run.copy_(state["skip_run"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def build_train_step(model_name: str, *, device: torch.device | str, precision: str = "bf16",
                     compile_model: bool = True, norm_pix_loss: bool = True, mask_ratio: float = 0.75,
                     lr: float = 1e-4, weight_decay: float = 0.05, attn_backend: str = "auto",
                     compile_backend: str = "inductor", seed: int = 0,
                     recompute: str | None = None, weights: str | None = None) -> Callable[[torch.Tensor], None]:
    """A fresh model + fused AdamW behind ``step(imgs (N, C, H, W))``, one optimizer step per call.

    The trainer's step outside the trainer, for benchmarks: same compile, autocast, noise and
    sync-free update; the loss stays on the device. ``recompute`` / ``weights`` None: the trainer's defaults.
    """
    from fastmae.models.recompute import DEFAULT_RECOMPUTE
    from fastmae.train.modeling import build_model
    from fastmae.train.optim import build_optimizer

    dtype = autocast_dtype(precision)
    device = torch.device(device)
    model = build_model(model_name, attn_backend=attn_backend, norm_pix_loss=norm_pix_loss).to(device)
    model.set_recompute(DEFAULT_RECOMPUTE if recompute is None else recompute)
    master = MasterWeights(model) if resolve_weights(weights, precision) == "bf16" else None
    optimizer = build_optimizer(model, lr=lr, weight_decay=weight_decay, master=master)
    train_step = TrainStep(model, optimizer, num_patches=model.num_patches, mask_ratio=mask_ratio, accum_iter=1,
                           device=device, autocast_dtype=dtype, compile=compile_model,
                           compile_backend=compile_backend, seed=seed, master=master)
    steps_done = 0

    def step(imgs: torch.Tensor) -> None:
        nonlocal steps_done
        train_step(steps_done, [imgs])
        steps_done += 1

    step.train_step = train_step  # for inspection: .model, .read_metrics()
    return step
