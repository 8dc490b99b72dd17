"""Lazy loader of the optional native extension (kernels/, built by CMakeLists.txt through setup.py).

The extension is a plain shared library, ``fastmae/_fastmae_native.so``, that registers the
``torch.ops.fastmae_native`` ops (CPU kernels always, CUDA kernels when it was built with nvcc).
It has no Python module of its own: :func:`available` loads it with ``torch.ops.load_library`` on
first use and then registers, from Python, what torch needs on top of the compiled kernels: the
autograd formulas (``torch.library.register_autograd``) and the fake/meta implementations
(``torch.library.register_fake``) that let ``torch.compile`` trace the ops.

Nothing here runs at ``import fastmae`` time; ``fastmae.ops`` asks :func:`available` per call.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

LIBRARY_STEM = "_fastmae_native"
NAMESPACE = "fastmae_native"
BUILD_HINT = (
    "build it with cmake and a C++ compiler present: `pip install --no-build-isolation -e .` "
    "(FASTMAE_BUILD_NATIVE=1 turns a failed native build into an error), or "
    "`cmake -S . -B build && cmake --build build` in a source checkout"
)

# None: not tried yet; then True/False. Tests make the extension unavailable by monkeypatching available().
_loaded: bool | None = None
_load_error: str | None = None


def library_path() -> Path | None:
    """The built library inside the fastmae package, or None when it was not built."""
    package_dir = Path(__file__).resolve().parent
    for suffix in (".so", ".dylib", ".pyd", ".dll"):
        candidate = package_dir / f"{LIBRARY_STEM}{suffix}"
        if candidate.is_file():
            return candidate
    return None


@torch.compiler.assume_constant_result  # compiled code must not trace the file-system lookups of the load
def available() -> bool:
    """True when the compiled extension is built, loads, and its ops are registered. Never raises."""
    global _loaded, _load_error
    if _loaded is None:
        try:
            _load()
            _loaded = True
        except Exception as error:  # a broken build must degrade to the other backends, not crash
            _loaded, _load_error = False, f"{type(error).__name__}: {error}"
    return _loaded


def load_error() -> str | None:
    """Why the extension is unavailable (None when it loaded or was not tried yet)."""
    return _load_error


def has_cuda_kernels() -> bool:
    """Whether the loaded extension was built with its CUDA part."""
    if not available():
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::patchify_gather", "CUDA")


def require() -> None:
    """Raise a clear error when the native backend is asked for but not usable."""
    if available():
        return
    reason = _load_error or f"no {LIBRARY_STEM} library in the fastmae package"
    raise RuntimeError(
        f"FASTMAE_BACKEND=native, but fastmae's native extension is not available ({reason}); {BUILD_HINT}"
    )


def _load() -> None:
    path = library_path()
    if path is None:
        raise FileNotFoundError(f"{LIBRARY_STEM} was not built into {Path(__file__).resolve().parent}")
    torch.ops.load_library(str(path))
    _register_python_parts()


# --------------------------------------------------------------------------------------
# Fake (meta) implementations and autograd, registered once after the library loads
# --------------------------------------------------------------------------------------
def _register_python_parts() -> None:
    lib = f"{NAMESPACE}::"
    torch.library.register_fake(lib + "patchify_gather")(_patchify_gather_fake)
    torch.library.register_fake(lib + "patchify_gather_backward")(_patchify_gather_backward_fake)
    torch.library.register_autograd(
        lib + "patchify_gather", _patchify_gather_backward, setup_context=_patchify_gather_setup
    )
    torch.library.register_fake(lib + "unshuffle_with_mask_token")(_unshuffle_fake)
    torch.library.register_fake(lib + "unshuffle_with_mask_token_backward")(_unshuffle_backward_fake)
    torch.library.register_autograd(
        lib + "unshuffle_with_mask_token", _unshuffle_backward, setup_context=_unshuffle_setup
    )
    torch.library.register_fake(lib + "masked_mse_loss")(_loss_fake)
    torch.library.register_fake(lib + "masked_mse_loss_backward")(_loss_backward_fake)
    torch.library.register_autograd(lib + "masked_mse_loss", _loss_backward, setup_context=_loss_setup)


def _patchify_gather_fake(imgs: torch.Tensor, ids_keep: torch.Tensor, patch_size: list[int]) -> torch.Tensor:
    return imgs.new_empty((imgs.shape[0], ids_keep.shape[1], math.prod(patch_size) * imgs.shape[1]))


def _patchify_gather_backward_fake(
    grad: torch.Tensor, ids_keep: torch.Tensor, patch_size: list[int], imgs_shape: list[int]
) -> torch.Tensor:
    return grad.new_empty(imgs_shape)


def _patchify_gather_setup(ctx, inputs, output) -> None:
    imgs, ids_keep, patch_size = inputs
    ctx.save_for_backward(ids_keep)
    ctx.imgs_shape = list(imgs.shape)
    ctx.patch_size = list(patch_size)


def _patchify_gather_backward(ctx, grad):
    (ids_keep,) = ctx.saved_tensors
    grad_imgs = torch.ops.fastmae_native.patchify_gather_backward(grad, ids_keep, ctx.patch_size, ctx.imgs_shape)
    return grad_imgs, None, None


def _unshuffle_fake(
    x_vis: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor, pos_embed: torch.Tensor | None
) -> torch.Tensor:
    dtype = x_vis.dtype if pos_embed is None else torch.promote_types(x_vis.dtype, pos_embed.dtype)
    return x_vis.new_empty((x_vis.shape[0], 1 + ids_restore.shape[1], x_vis.shape[2]), dtype=dtype)


def _unshuffle_backward_fake(
    grad_out: torch.Tensor,
    ids_restore: torch.Tensor,
    num_visible: int,
    x_vis_dtype: torch.dtype,
    mask_token_dtype: torch.dtype,
    pos_embed_dtype: torch.dtype | None,
    needs_grad: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, rows, width = grad_out.shape
    empty = grad_out.new_empty((0,))
    grad_x = grad_out.new_empty((batch, 1 + num_visible, width), dtype=x_vis_dtype) if needs_grad[0] else empty
    grad_mask = grad_out.new_empty((1, 1, width), dtype=mask_token_dtype) if needs_grad[1] else empty
    need_pos = needs_grad[2] and pos_embed_dtype is not None
    grad_pos = grad_out.new_empty((1, rows, width), dtype=pos_embed_dtype) if need_pos else empty
    return grad_x, grad_mask, grad_pos


def _unshuffle_setup(ctx, inputs, output) -> None:
    x_vis, mask_token, ids_restore, pos_embed = inputs
    ctx.save_for_backward(ids_restore)
    ctx.num_visible = x_vis.shape[1] - 1
    ctx.dtypes = (x_vis.dtype, mask_token.dtype, pos_embed.dtype if pos_embed is not None else None)


def _unshuffle_backward(ctx, grad_out):
    (ids_restore,) = ctx.saved_tensors
    need_x, need_mask, _, need_pos = ctx.needs_input_grad
    grad_x, grad_mask, grad_pos = torch.ops.fastmae_native.unshuffle_with_mask_token_backward(
        grad_out, ids_restore, ctx.num_visible, *ctx.dtypes, [need_x, need_mask, need_pos]
    )
    return (grad_x if need_x else None, grad_mask if need_mask else None, None, grad_pos if need_pos else None)


def _loss_fake(pred, imgs, ids_restore, mask, target, sample_weight, patch_size, norm_pix, eps) -> torch.Tensor:
    return pred.new_empty((), dtype=torch.float32)


def _loss_backward_fake(
    grad_loss, pred, imgs, ids_restore, mask, target, sample_weight, patch_size, norm_pix, eps, source_grad
) -> tuple[torch.Tensor, torch.Tensor]:
    source = imgs if imgs is not None else target
    return pred.new_empty(pred.shape), source.new_empty(source.shape if source_grad else (0,))


def _loss_setup(ctx, inputs, output) -> None:
    pred, imgs, ids_restore, mask, target, sample_weight, patch_size, norm_pix, eps = inputs
    ctx.save_for_backward(pred, imgs, ids_restore, mask, target, sample_weight)
    ctx.patch_size, ctx.norm_pix, ctx.eps = list(patch_size), norm_pix, eps
    ctx.source_index = 1 if imgs is not None else 4  # imgs or target: the one the target rows come from


def _loss_backward(ctx, grad_loss):
    pred, imgs, ids_restore, mask, target, sample_weight = ctx.saved_tensors
    source_grad = bool(ctx.needs_input_grad[ctx.source_index])
    grad_pred, grad_source = torch.ops.fastmae_native.masked_mse_loss_backward(
        grad_loss, pred, imgs, ids_restore, mask, target, sample_weight, ctx.patch_size, ctx.norm_pix, ctx.eps,
        source_grad,
    )
    grads: list[torch.Tensor | None] = [grad_pred, None, None, None, None, None, None, None, None]
    if source_grad:
        grads[ctx.source_index] = grad_source
    return tuple(grads)
