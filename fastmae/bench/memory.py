"""Memory of one training step, traced without a GPU: what autograd keeps, by category, and the peak.

One step (forward under autocast, loss, backward) runs under a dispatch mode that records every
tensor storage the ops create and notices, storage by storage, when it is freed. Run under
``FakeTensorMode`` (``fake=True``) no memory is allocated and no arithmetic is done, so ViT-H at batch
512 traces in seconds on a CPU; run on real CPU tensors (``fake=False``, small sizes) it is a
measurement. Two figures of the bytes kept for backward come out of one trace:

- ``activations``: storages alive at the end of the forward (after the loss) that were not alive
  before it (parameters and the input batch excluded): what the autograd graph holds, whatever
  holds it (saved tensors, checkpoint inputs, selective-recompute caches), by category;
- ``saved_hook_bytes``: distinct storages packed by ``torch.autograd.graph.saved_tensors_hooks``
  (the same exclusions). Equal to the first for plain eager steps; recomputed regions hide their
  saves from an outer hook, so it undercounts those.

Each storage is attributed to the module running when it was created (forward hooks keep a stack):
``{encoder|decoder} {residual stream|layernorm|attention|mlp|other}``, ``head + loss`` (decoder_norm,
decoder_pred, the loss), and ``autocast weight copies`` (low-precision casts of parameters).

The predicted peak of a steady-state step is the traced peak of forward + backward (parameters,
batch, activations, gradients and temporaries together) plus the AdamW state (exp_avg and exp_avg_sq,
allocated at the first step) and, with bf16 weights (``weights="bf16"``, the trainer's ``--weights``),
the fp32 master weights, or the optimizer step's own peak if larger (the gradients are fp32 there:
bf16 ones are widened onto the masters; the non-fused reference AdamW's foreach kernels make about one
parameter-sized temporary). It counts tensor bytes, like
``torch.cuda.max_memory_allocated``; the CUDA context, library workspaces and allocator rounding are
not in it, hence the usable-fraction ``headroom`` of a GPU's memory in :func:`fits`.

The trace uses CPU autocast's op lists. They differ from CUDA's in one way that matters here: CUDA
autocast runs softmax in fp32, so on a GPU the explicit-softmax reference also keeps an fp32
(N, heads, T, T) softmax output that this trace does not see (its figures are lower bounds).
torch.compile's partitioner is not traced: the figures are those of an eager step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from fastmae.bench.providers import AUTOCAST_DTYPES, GPU_PRECISION, PROVIDERS, REFERENCE_ATTN
from fastmae.models.recompute import RECOMPUTE_MODES, check_recompute
from fastmae.train.precision import WEIGHTS

# usable bytes of the GPUs the planner knows (decimal GB, as the vendors state them)
GPU_MEMORY_BYTES: dict[str, int] = {"h100": 80 * 10**9, "h200": 141 * 10**9}
DEFAULT_HEADROOM = 0.92  # fraction of a GPU's memory a step may use (context, workspaces, fragmentation)

PARTS = ("encoder", "decoder")
KINDS = ("residual stream", "layernorm", "attention", "mlp", "other")
HEAD_AND_LOSS = "head + loss"
WEIGHT_COPIES = "autocast weight copies"
CATEGORIES: tuple[str, ...] = (*(f"{p} {k}" for p in PARTS for k in KINDS), HEAD_AND_LOSS, WEIGHT_COPIES)
_BACKWARD = "backward"

_KIND_OF_CLASS = {"Block": "residual stream", "LayerNorm": "layernorm", "Attention": "attention", "Mlp": "mlp"}
_PART_OF_CHILD = {"patch_embed": "encoder", "blocks": "encoder", "norm": "encoder", "decoder_embed": "decoder",
                  "decoder_blocks": "decoder", "decoder_norm": HEAD_AND_LOSS, "decoder_pred": HEAD_AND_LOSS}
# non-fused AdamW (the reference's) makes about one parameter-sized temporary in its foreach step
_FOREACH_TEMPORARIES = 1


def _storage_key(tensor: torch.Tensor) -> StorageWeakRef:
    return StorageWeakRef(tensor.untyped_storage())


class _ModuleScope:
    """Names the category of what is being created: the running module (global forward hooks) and phase."""

    def __init__(self, model: nn.Module) -> None:
        self._modules = {id(m): (name, type(m).__name__) for name, m in model.named_modules() if name}
        self._stack: list[tuple[str, str]] = []
        self._blocks_seen: set[str] = set()
        self.in_backward = False

    @contextmanager
    def active(self) -> Iterator[None]:
        pre = nn.modules.module.register_module_forward_pre_hook(self._push)
        post = nn.modules.module.register_module_forward_hook(self._pop, always_call=True)
        try:
            yield
        finally:
            pre.remove()
            post.remove()

    def _push(self, module: nn.Module, args: object) -> None:
        entry = self._modules.get(id(module))
        if entry is not None:
            self._stack.append(entry)
            if not self.in_backward:
                self._blocks_seen.add(entry[0].split(".")[0])

    def _pop(self, module: nn.Module, args: object, output: object) -> None:
        if id(module) in self._modules and self._stack:
            self._stack.pop()

    def category(self) -> str:
        if self.in_backward:
            return _BACKWARD  # gradients, recomputed activations, temporaries
        if not self._stack:  # the model's own forward: embedding, masking, decoder input, loss
            if "decoder_blocks" in self._blocks_seen:
                return HEAD_AND_LOSS
            return "decoder other" if "blocks" in self._blocks_seen else "encoder other"
        part = _PART_OF_CHILD.get(self._stack[0][0].split(".")[0], "encoder")
        if part == HEAD_AND_LOSS:
            return part
        kind = next((_KIND_OF_CLASS[cls] for _, cls in reversed(self._stack) if cls in _KIND_OF_CLASS), "other")
        return f"{part} {kind}"


class _StorageLedger(TorchDispatchMode):
    """Live tensor storages (bytes, category), their running total and its peak, op by op.

    ``fixed`` storages (parameters, the batch) live through the whole trace: counted once, not swept.
    Frees are noticed lazily, before each new storage is counted: the peak can only rise there.
    """

    def __init__(self, scope: _ModuleScope, fixed: Sequence[torch.Tensor], parameter_keys: set[StorageWeakRef]) -> None:
        super().__init__()
        self._scope = scope
        self._parameter_keys = parameter_keys
        self.fixed = {_storage_key(t): t.untyped_storage().nbytes() for t in fixed}
        self.live: dict[StorageWeakRef, tuple[int, str]] = {}
        self.total = sum(self.fixed.values())
        self.peak = self.total

    def add(self, tensor: torch.Tensor, category: str) -> None:
        key = _storage_key(tensor)
        if key in self.live or key in self.fixed:
            return
        self.sweep()
        nbytes = tensor.untyped_storage().nbytes()
        self.live[key] = (nbytes, category)
        self.total += nbytes
        self.peak = max(self.peak, self.total)

    def sweep(self) -> None:
        expired = torch.UntypedStorage._expired
        for key in [key for key in self.live if expired(key.cdata)]:
            self.total -= self.live.pop(key)[0]

    def by_category(self) -> dict[str, int]:
        """Bytes of the live non-fixed storages by category."""
        self.sweep()
        out: dict[str, int] = {}
        for nbytes, category in self.live.values():
            out[category] = out.get(category, 0) + nbytes
        return out

    def __torch_dispatch__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        category = self._scope.category()
        if (func is torch.ops.aten._to_copy.default and isinstance(args[0], torch.Tensor)
                and _storage_key(args[0]) in self._parameter_keys and category != _BACKWARD):
            category = WEIGHT_COPIES
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.add(leaf, category)
        return out


@dataclass(frozen=True)
class StepMemory:
    """Memory of one training step of ``provider`` (bytes)."""

    provider: str
    model: str
    batch: int
    precision: str
    recompute: str
    fake: bool
    activations: dict[str, int]  # kept for backward at the end of the forward, by category
    saved_hook_bytes: int  # distinct storages packed by saved_tensors_hooks (see the module doc)
    parameter_bytes: int
    gradient_bytes: int
    optimizer_bytes: int  # AdamW exp_avg + exp_avg_sq
    input_bytes: int  # the batch and the masking noise
    traced_peak_bytes: int  # forward + backward, parameters and batch included, optimizer state not
    optimizer_step_peak_bytes: int = field(default=0)
    weights: str = "fp32"  # dtype of the Linear/conv weights the model holds
    master_bytes: int = 0  # fp32 master weights in the optimizer (weights "bf16")

    @property
    def activation_bytes(self) -> int:
        return sum(self.activations.values())

    @property
    def peak_bytes(self) -> int:
        """Predicted peak of a steady-state step (optimizer state allocated)."""
        return max(self.traced_peak_bytes + self.optimizer_bytes + self.master_bytes, self.optimizer_step_peak_bytes)

    def row(self) -> dict[str, Any]:
        """A flat benchmark row."""
        return {
            "bench": "memory", "model": self.model, "provider": self.provider, "batch": self.batch,
            "precision": self.precision, "recompute": self.recompute, "weights": self.weights,
            "traced": "fake" if self.fake else "cpu",
            "activation_bytes": self.activation_bytes, "saved_hook_bytes": self.saved_hook_bytes,
            "parameter_bytes": self.parameter_bytes, "gradient_bytes": self.gradient_bytes,
            "optimizer_bytes": self.optimizer_bytes, "master_bytes": self.master_bytes, "peak_bytes": self.peak_bytes,
            **{f"act[{c}]": self.activations.get(c, 0) for c in CATEGORIES},
        }


def provider_precision(provider: str) -> str:
    return GPU_PRECISION[provider]


def _build_model(provider: str, model_name: str, norm_pix_loss: bool, recompute: str,
                 weights: str = "fp32") -> nn.Module:
    """``provider``'s model; fastmae's with ``recompute`` and its Linear/conv weights in ``weights``."""
    if provider == "fastmae":
        from fastmae.train.master_weights import MasterWeights
        from fastmae.train.modeling import build_model

        model = build_model(model_name, norm_pix_loss=norm_pix_loss)
        model.set_recompute(recompute)
        if weights == "bf16":
            MasterWeights(model)  # converts the weights in place (the trainer's rule); the masters are counted apart
        return model
    from fastmae.reference import create_reference_model

    return create_reference_model(model_name, attn_impl=REFERENCE_ATTN[provider], norm_pix_loss=norm_pix_loss)


class StepTracer:
    """One model of ``provider`` (fake or real, on CPU) whose training step is traced at any batch.

    ``recompute`` and ``weights`` (the trainer's ``--weights``: "bf16" holds the Linear/conv weights in
    bf16 with an fp32 master in the optimizer) apply to fastmae only; ``precision`` defaults to what the
    provider runs on a GPU (reference-published fp16, the others bf16).
    """

    def __init__(self, provider: str, model_name: str, *, precision: str | None = None, recompute: str = "none",
                 weights: str = "fp32", fake: bool = True, mask_ratio: float = 0.75, norm_pix_loss: bool = True,
                 seed: int = 0) -> None:
        if provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
        precision = precision or provider_precision(provider)
        if precision not in AUTOCAST_DTYPES:
            raise ValueError(f"precision must be one of {', '.join(AUTOCAST_DTYPES)}, got {precision!r}")
        check_recompute(recompute)
        if provider != "fastmae" and recompute != "none":
            raise ValueError(f"recompute applies to the fastmae provider only, got {recompute!r} for {provider}")
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
        if weights != "fp32" and (provider != "fastmae" or precision != "bf16"):
            raise ValueError(f"weights {weights!r} applies to the fastmae provider in bf16 only, got {provider} "
                             f"in {precision}")
        self.provider, self.model_name, self.precision = provider, model_name, precision
        self.recompute, self.weights, self.fake, self.mask_ratio = recompute, weights, fake, mask_ratio
        self._mode = self._fake_mode() if fake else None
        torch.manual_seed(seed)
        with self._maybe_fake():
            self.model = _build_model(provider, model_name, norm_pix_loss, recompute, weights)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        fp32_bytes = 4 * sum(p.numel() for p in trainable)  # AdamW moments, masters and step gradients are fp32
        self._parameter_bytes = sum(t.untyped_storage().nbytes() for t in [*self.model.parameters(),
                                                                           *self.model.buffers()])
        self._optimizer_bytes = 2 * fp32_bytes
        self._master_bytes = 4 * sum(p.numel() for p in trainable if p.dtype != torch.float32)
        self._step_gradient_bytes = fp32_bytes
        self._foreach_bytes = 0 if provider == "fastmae" else _FOREACH_TEMPORARIES * fp32_bytes

    @staticmethod
    def _fake_mode() -> Any:
        from torch._subclasses.fake_tensor import FakeTensorMode

        # the model's init copies real numpy-built tables into its (fake) parameters
        return FakeTensorMode(allow_non_fake_inputs=True)

    @contextmanager
    def _maybe_fake(self) -> Iterator[None]:
        if self._mode is None:
            yield
        else:
            with self._mode:
                yield

    def trace(self, batch: int) -> StepMemory:
        """Trace one training step at ``batch`` images and return its memory."""
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        model = self.model
        with self._maybe_fake():
            height, width = model.img_size
            imgs = torch.randn(batch, model.in_chans, height, width)
            noise = torch.rand(batch, model.num_patches)
            return self._run(model, imgs, noise, batch)

    def _run(self, model: nn.Module, imgs: torch.Tensor, noise: torch.Tensor, batch: int) -> StepMemory:
        scope = _ModuleScope(model)
        params = [*model.parameters(), *model.buffers()]
        ledger = _StorageLedger(scope, [*params, imgs, noise], {_storage_key(p) for p in params})
        baseline_keys = set(ledger.fixed)
        saved: dict[StorageWeakRef, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            key = _storage_key(tensor)
            if key not in baseline_keys and key not in saved:
                saved[key] = tensor.untyped_storage().nbytes()
            return tensor

        dtype = AUTOCAST_DTYPES[self.precision]
        with scope.active(), ledger:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                    loss = model(imgs, self.mask_ratio, noise)[0]
                loss = loss.float()
            activations = ledger.by_category()
            scope.in_backward = True
            loss.backward()
        grads = sum(p.grad.untyped_storage().nbytes() for p in model.parameters() if p.grad is not None)
        model.zero_grad(set_to_none=True)
        return StepMemory(
            provider=self.provider, model=self.model_name, batch=batch, precision=self.precision,
            recompute=self.recompute, fake=self.fake, activations=activations,
            saved_hook_bytes=sum(saved.values()), parameter_bytes=self._parameter_bytes, gradient_bytes=grads,
            optimizer_bytes=self._optimizer_bytes, input_bytes=imgs.nbytes + noise.nbytes,
            traced_peak_bytes=ledger.peak,
            optimizer_step_peak_bytes=(self._parameter_bytes + self._master_bytes + self._step_gradient_bytes
                                       + self._optimizer_bytes + self._foreach_bytes + imgs.nbytes + noise.nbytes),
            weights=self.weights, master_bytes=self._master_bytes,
        )


def gpu_capacity(gpu: str | int) -> int:
    """Bytes of a named GPU ("h100", "h200") or a byte count passed through."""
    if isinstance(gpu, int):
        if gpu <= 0:
            raise ValueError(f"GPU memory must be positive, got {gpu}")
        return gpu
    if gpu not in GPU_MEMORY_BYTES:
        raise ValueError(f"gpu must be one of {', '.join(GPU_MEMORY_BYTES)} or a byte count, got {gpu!r}")
    return GPU_MEMORY_BYTES[gpu]


def fits(memory: StepMemory, capacity: int, headroom: float = DEFAULT_HEADROOM) -> bool:
    """Whether the predicted peak fits in ``headroom`` x ``capacity`` bytes."""
    return memory.peak_bytes <= headroom * capacity


def largest_batch(tracer: StepTracer, capacity: int, *, headroom: float = DEFAULT_HEADROOM,
                  probe_batches: tuple[int, int] = (8, 16)) -> tuple[int, StepMemory | None]:
    """The largest batch whose predicted peak fits ``headroom`` x ``capacity``, and its trace (0, None if none).

    Activations are affine in the batch (static shapes), so two probes give a first guess; a
    bracketing search from it (doubling steps, then bisection) settles the exact batch.
    """
    if not 0 < headroom <= 1:
        raise ValueError(f"headroom must be in (0, 1], got {headroom}")
    budget = headroom * capacity
    traces: dict[int, StepMemory] = {}

    def fits_at(batch: int) -> bool:
        if batch not in traces:
            traces[batch] = tracer.trace(batch)
        return traces[batch].peak_bytes <= budget

    b1, b2 = probe_batches
    m1, m2 = traces.setdefault(b1, tracer.trace(b1)), traces.setdefault(b2, tracer.trace(b2))
    per_image = max((m2.peak_bytes - m1.peak_bytes) / (b2 - b1), 1.0)
    guess = max(1, int((budget - (m1.peak_bytes - per_image * b1)) // per_image))
    step = 1
    if fits_at(guess):  # lo fits, hi does not
        lo, hi = guess, guess + 1
        while fits_at(hi):
            lo, step = hi, step * 2
            hi = lo + step
    else:
        hi = guess
        while True:
            if hi == 1:
                return 0, None
            lo = max(1, hi - step)
            if fits_at(lo):
                break
            hi, step = lo, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits_at(mid) else (lo, mid)
    return lo, traces[lo]


def trace_providers(model_name: str, batch: int, *, providers: Sequence[str] = PROVIDERS,
                    recompute: str = "none", weights: str = "fp32", fake: bool = True,
                    on_trace: Callable[[StepTracer], None] | None = None) -> list[StepMemory]:
    """One step traced per provider at ``batch``; ``recompute`` and ``weights`` apply to fastmae."""
    out = []
    for provider in providers:
        ours = provider == "fastmae"
        tracer = StepTracer(provider, model_name, recompute=recompute if ours else "none",
                            weights=weights if ours else "fp32", fake=fake)
        if on_trace is not None:
            on_trace(tracer)
        out.append(tracer.trace(batch))
    return out


__all__ = ["CATEGORIES", "DEFAULT_HEADROOM", "GPU_MEMORY_BYTES", "RECOMPUTE_MODES", "StepMemory", "StepTracer",
           "fits", "gpu_capacity", "largest_batch", "trace_providers"]
