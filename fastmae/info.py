"""``fastmae info``: versions, optional components, and which backend each fused op runs on.

Optional packages (triton, DALI, xformers) are looked up with ``importlib.util.find_spec`` and
their versions read from package metadata, so this command does not import them.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
from collections.abc import Sequence

import torch

from fastmae import _native
from fastmae._version import __version__
from fastmae.ops import _backend

FUSED_OPS = ("patchify_gather", "unshuffle_with_mask_token", "masked_mse_loss")
# import name -> distributions that may provide it (first installed one gives the version)
OPTIONAL_PACKAGES: dict[str, tuple[str, ...]] = {
    "triton": ("triton",),
    "nvidia.dali": ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali"),
    "xformers": ("xformers",),
}


def package_version(module: str, distributions: Sequence[str]) -> str | None:
    """The installed version of an optional package, or None when it is absent (never imports it)."""
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):  # a parent package missing or broken
        return None
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown version"


def available_backends(op: str, device_type: str) -> list[str]:
    """Backends that can run ``op`` for tensors on ``device_type`` here."""
    backends = []
    if package_version("triton", ("triton",)) is not None:
        backends.append("triton")  # CPU tensors need TRITON_INTERPRET=1
    dispatch_key = "CUDA" if device_type == "cuda" else "CPU"
    if _native.available() and torch._C._dispatch_has_kernel_for_dispatch_key(
        f"{_native.NAMESPACE}::{op}", dispatch_key
    ):
        backends.append("native")
    backends.append("torch")
    return backends


def chosen_backend(device_type: str) -> str:
    """What ``select_backend`` picks for a tensor on that device type (or why it refuses)."""
    try:
        return _backend.select_backend(torch.device(device_type))
    except (RuntimeError, ValueError) as error:
        return f"error: {error}"


def collect() -> dict[str, object]:
    cuda = torch.cuda.is_available()
    return {
        "fastmae": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "packages": {module: package_version(module, dists) for module, dists in OPTIONAL_PACKAGES.items()},
        "native": {
            "available": _native.available(),
            "library": str(_native.library_path()) if _native.library_path() else None,
            "cuda_kernels": _native.has_cuda_kernels(),
            "error": _native.load_error(),
        },
        "backend_env": f"{_backend.ENV_VAR}={os.environ.get(_backend.ENV_VAR, 'auto')}",
        "ops": {
            op: {
                device: {"available": available_backends(op, device), "chosen": chosen_backend(device)}
                for device in ("cpu", "cuda")
            }
            for op in FUSED_OPS
        },
    }


def format_report(info: dict) -> str:
    packages = info["packages"]
    native = info["native"]
    lines = [
        f"fastmae {info['fastmae']}  python {info['python']}  torch {info['torch']} (CUDA {info['torch_cuda']})",
        f"CUDA available: {info['cuda_available']}" + (f" ({info['cuda_device']})" if info["cuda_device"] else ""),
    ]
    for module, version in packages.items():
        lines.append(f"{module}: {version or 'not installed'}")
    state = "loaded" if native["available"] else f"not available ({native['error'] or 'not built'})"
    lines.append(f"native extension: {state}" + (f" from {native['library']}" if native["available"] else ""))
    if native["available"]:
        lines.append(f"native CUDA kernels: {'yes' if native['cuda_kernels'] else 'no (CPU-only build)'}")
    lines.append(info["backend_env"])
    lines.append(f"{'op':<28}{'device':<8}{'available':<28}chosen")
    for op, per_device in info["ops"].items():
        for device, entry in per_device.items():
            lines.append(f"{op:<28}{device:<8}{', '.join(entry['available']):<28}{entry['chosen']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastmae info", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    args = parser.parse_args(argv)
    info = collect()
    print(json.dumps(info, indent=2) if args.json else format_report(info))
    return 0
