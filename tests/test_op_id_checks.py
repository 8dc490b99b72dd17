"""Patch ids a caller passes are checked on the device (no host sync) at every op's functional API.

Without these checks an id of -1, an id of L or a repeated id gave wrong outputs or gradients, or read out of
bounds, on the torch and Triton paths. Each functional API now asserts the values with ``torch._assert_async``
(a RuntimeError naming the argument); fastmae's own training path (ids its masking made) skips the check.
FASTMAE_DEBUG=1 keeps its host-side check (a ValueError with the offending index: the op test files cover it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from model_testing import make_inputs as make_model_inputs
from model_testing import make_pair
from op_testing import BACKENDS
from torch._dynamo.backends.registry import lookup_backend

from fastmae.ops import masked_mse_loss, patchify_gather, random_masking, removed_ids, unshuffle_with_mask_token
from fastmae.ops.masking import MaskingResult

BATCH, GRID, PATCH, KEEP = 2, (2, 3), 4, 2
L = GRID[0] * GRID[1]
P = PATCH * PATCH * 3


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, use_backend, monkeypatch: pytest.MonkeyPatch, device) -> str:  # type: ignore[no-untyped-def]
    if device.type == "cuda":
        pytest.skip("a failed device-side assert ends the CUDA context: test_cuda_assert_stops_the_op covers CUDA")
    monkeypatch.delenv("FASTMAE_DEBUG", raising=False)  # the device-side check, not debug mode's host check
    return use_backend(request.param)


def _imgs() -> torch.Tensor:
    return torch.randn(BATCH, 3, GRID[0] * PATCH, GRID[1] * PATCH, requires_grad=True)


class Call(NamedTuple):
    """One functional API taking ids: ``run(ids, *inputs())`` returns a scalar; ``argument`` names the ids,
    ``valid(masking)`` gives valid ones."""

    run: Callable[..., torch.Tensor]
    inputs: Callable[[], tuple[torch.Tensor, ...]]
    argument: str
    valid: Callable[[MaskingResult], torch.Tensor]


def _decoder_inputs() -> tuple[torch.Tensor, ...]:
    return torch.randn(BATCH, 1 + KEEP, 8, requires_grad=True), torch.randn(1, 1, 8), torch.randn(1, 1 + L, 8)


def _pred(rows: int) -> Callable[[], tuple[torch.Tensor, ...]]:
    return lambda: (torch.randn(BATCH, rows, P, requires_grad=True), _imgs())


CALLS = {
    "patchify_gather": Call(
        lambda ids, imgs: patchify_gather(imgs, ids, PATCH).square().sum(), lambda: (_imgs(),),
        "ids_keep", lambda m: m.ids_keep,
    ),
    "unshuffle_with_mask_token": Call(
        lambda ids, x, token, pos: unshuffle_with_mask_token(x, token, ids, pos).square().sum(), _decoder_inputs,
        "ids_restore", lambda m: m.ids_restore,
    ),
    "masked_mse_loss-ids_restore": Call(
        lambda ids, pred, imgs: masked_mse_loss(pred, imgs, ids, PATCH, norm_pix=True), _pred(L - KEEP),
        "ids_restore", lambda m: m.ids_restore,
    ),
    "masked_mse_loss-num_keep": Call(
        lambda ids, pred, imgs: masked_mse_loss(pred, imgs, ids, PATCH, num_keep=KEEP), _pred(L),
        "ids_restore", lambda m: m.ids_restore,
    ),
    "masked_mse_loss-ids_removed": Call(
        lambda ids, pred, imgs: masked_mse_loss(pred, imgs, None, PATCH, ids_removed=ids), _pred(L - KEEP),
        "ids_removed", lambda m: m.ids_shuffle[:, KEEP:],
    ),
    "removed_ids": Call(
        lambda ids: removed_ids(ids, KEEP).sum().float(), tuple, "ids_restore", lambda m: m.ids_restore,
    ),
}  # fmt: skip


def _valid(call: Call) -> torch.Tensor:
    return call.valid(random_masking(BATCH, L, 1 - (KEEP + 0.5) / L))  # keeps KEEP of the L patches


def _spoil(ids: torch.Tensor, case: str, length: int = L) -> torch.Tensor:
    ids = ids.clone()
    if case == "minus-one":
        ids[1, 0] = -1
    elif case == "L":
        ids[1, 0] = length
    else:  # a repeated id in a row (of the right range)
        ids[0, 1] = ids[0, 0]
    return ids


@pytest.mark.parametrize("case", ["minus-one", "L", "duplicate"])
@pytest.mark.parametrize("call", sorted(CALLS))
def test_invalid_ids_raise_naming_the_argument(backend: str, call: str, case: str) -> None:
    spec = CALLS[call]
    rule = "repeats a patch index" if case == "duplicate" else r"holds a patch index outside \[0, L\)"
    message = f"{spec.argument} {rule}"
    with pytest.raises(RuntimeError, match=message):
        out = spec.run(_spoil(_valid(spec), case), *spec.inputs())
        if out.requires_grad:  # a wrong gradient would be silent too
            out.backward()


@pytest.mark.parametrize("call", sorted(CALLS))
def test_valid_ids_pass(backend: str, call: str) -> None:
    spec = CALLS[call]
    out = spec.run(_valid(spec), *spec.inputs())
    assert out.shape == () and torch.isfinite(out)
    if out.requires_grad:
        out.backward()


@pytest.mark.parametrize("call", ["patchify_gather", "unshuffle_with_mask_token", "masked_mse_loss-ids_removed"])
def test_the_check_compiles_into_a_full_graph(call: str, use_backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """No host sync, so no graph break: the assertions are in the aot_eager graph and still fire there."""
    use_backend("torch")
    monkeypatch.delenv("FASTMAE_DEBUG", raising=False)
    spec = CALLS[call]
    graphs: list[str] = []

    def recording_backend(gm, example_inputs):  # type: ignore[no-untyped-def]
        graphs.append(gm.code)  # dynamo's graph, then the aot_eager backend runs it (functionalised)
        return lookup_backend("aot_eager")(gm, example_inputs)

    compiled = torch.compile(spec.run, fullgraph=True, backend=recording_backend)
    ids, inputs = _valid(spec), spec.inputs()
    torch.testing.assert_close(compiled(ids, *inputs), spec.run(ids, *inputs), rtol=0, atol=0)
    assert len(graphs) == 1 and graphs[0].count("torch._assert_async(") == 2, graphs
    with pytest.raises(RuntimeError, match=f"{spec.argument} repeats a patch index"):
        compiled(_spoil(ids, "duplicate"), *inputs)


def test_training_path_does_not_check_its_own_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's forward passes the ids its masking made (valid by construction): no assertion runs; the
    model's methods that take ids from a caller still check them."""
    monkeypatch.delenv("FASTMAE_DEBUG", raising=False)
    calls: list[str] = []
    real_assert = torch._assert_async

    def counting_assert(cond: torch.Tensor, msg: str = "") -> None:
        calls.append(msg)
        real_assert(cond, msg)

    monkeypatch.setattr(torch, "_assert_async", counting_assert)
    model, _ = make_pair()
    imgs, noise = make_model_inputs(model, 2)
    loss, _, _ = model(imgs, 0.75, noise)
    loss.backward()
    assert calls == []

    masking = random_masking(2, model.num_patches, 0.75, noise=noise)
    latent = model.forward_encoder(imgs, masking.ids_keep)
    model.forward_decoder(latent, masking.ids_restore)
    assert len(calls) == 4 and "ids_keep" in calls[0] and "ids_restore" in calls[2]
    with pytest.raises(RuntimeError, match="ids_keep holds a patch index outside"):
        model.forward_encoder(imgs, _spoil(masking.ids_keep, "L", model.num_patches))


def test_debug_mode_checks_on_the_host_instead(use_backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """FASTMAE_DEBUG=1 (eager): the host check's ValueError with the index, for the library's own ids as well."""
    use_backend("torch", debug=True)
    ids_keep = _valid(CALLS["patchify_gather"])
    with pytest.raises(ValueError, match=rf"ids_keep holds patch index {L}, outside the valid range"):
        patchify_gather(_imgs(), _spoil(ids_keep, "L"), PATCH)
    with pytest.raises(ValueError, match="ids_keep repeats a patch index"):
        patchify_gather(_imgs(), _spoil(ids_keep, "duplicate"), PATCH, validate_ids=False)


CUDA_SCRIPT = """
import torch
from fastmae.ops import patchify_gather
imgs = torch.randn(2, 3, 8, 12, device="cuda")
ids_keep = torch.tensor([[0, 6], [1, 2]], device="cuda")  # 6 = L: out of range
out = patchify_gather(imgs, ids_keep, 4)
torch.cuda.synchronize()
print("NOT STOPPED")
"""


def test_cuda_assert_stops_the_op(cuda_device: torch.device) -> None:
    """On CUDA the failed assertion is a device-side assert: the process's CUDA context is lost, so it runs in a
    subprocess, which must fail (not print) with the assertion's message on stderr."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "FASTMAE_DEBUG": "0"}
    env.pop("FASTMAE_BACKEND", None)  # auto: the Triton kernel on CUDA
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", CUDA_SCRIPT], capture_output=True, text=True, env=env, cwd=root, timeout=300
    )
    assert result.returncode != 0 and "NOT STOPPED" not in result.stdout, result.stdout
    assert "device-side assert" in result.stderr or "ids_keep holds a patch index outside" in result.stderr, (
        result.stderr[-2000:]
    )
