"""Helpers shared by the model tests: paired fast/reference models and tensor comparisons."""

from __future__ import annotations

import copy

import torch

from fastmae.models import MaskedAutoencoderViT, create_model
from fastmae.reference import create_reference_model

# the tiny test model (16x16 px, p=4, L=16) and a 2-row non-square variant (8x16 px, 2x4 patches)
CONFIGS = {
    "square": dict(),
    "two_rows": dict(img_size=(8, 16)),
}


def make_pair(config: str = "square", **overrides: object) -> tuple[MaskedAutoencoderViT, torch.nn.Module]:
    """A fast model and a reference model with the same weights (loaded strictly, reference -> fast)."""
    options = {**CONFIGS[config], **overrides}
    reference_options = {k: v for k, v in options.items() if k != "attn_backend"}
    reference = create_reference_model("mae_vit_test", **reference_options)
    fast = create_model("mae_vit_test", **options)
    fast.load_state_dict(reference.state_dict(), strict=True)
    return fast, reference


def make_inputs(model: MaskedAutoencoderViT, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    imgs = torch.randn(batch, model.in_chans, *model.img_size)
    noise = torch.rand(batch, model.num_patches)
    return imgs, noise


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (absolute when b is zero)."""
    diff = (actual.double() - expected.double()).norm().item()
    scale = expected.double().norm().item()
    return diff / scale if scale > 0 else diff


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, name: str, tol: float = 1e-5) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    error = rel_error(actual, expected)
    assert error <= tol, f"{name}: relative error {error:.3e} > {tol:.0e}"


def assert_grads_close(fast: torch.nn.Module, reference: torch.nn.Module, tol: float = 1e-5) -> None:
    fast_grads, reference_grads = grads(fast), grads(reference)
    assert fast_grads.keys() == reference_grads.keys()
    for name, expected in reference_grads.items():
        assert expected is not None, f"reference has no gradient for {name}"
        assert fast_grads[name] is not None, f"no gradient for {name}"
        assert_close_rel(fast_grads[name], expected, f"grad {name}", tol)


def float64_copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).double()
