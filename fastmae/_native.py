"""Lazy loader of the optional native extension (kernels/, built by CMakeLists.txt through setup.py).

The extension is a plain shared library, ``fastmae/_fastmae_native.so``, that registers CPU kernels
(and CUDA kernels when it was built with nvcc) for the ``fastmae_kernels::`` ops. Those ops, their
schemas and their fake implementations are declared by the op modules (``fastmae.ops._backend.
define_native_kernel``), and the ``fastmae::`` op bodies call them; this module only finds and loads
the library, and says why it could not.

Nothing here runs at ``import fastmae`` time; the op bodies ask :func:`available` per call.
"""

from __future__ import annotations

from pathlib import Path

import torch

LIBRARY_STEM = "_fastmae_native"
NAMESPACE = "fastmae_kernels"  # where the library registers its kernels
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
    """True when the compiled extension is built and loads. Never raises."""
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
