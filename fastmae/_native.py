"""Lazy loader of the optional native extension (kernels/ built by CMakeLists.txt).

Placeholder until the native build lands: no extension is available.
"""

from __future__ import annotations


def available() -> bool:
    """True when the compiled extension is built and its ops are registered."""
    return False


def require() -> None:
    """Raise a clear error when the native backend is asked for but not built."""
    raise RuntimeError(
        "FASTMAE_BACKEND=native, but fastmae's native extension is not built: reinstall with cmake and a "
        "C++ compiler present (FASTMAE_BUILD_NATIVE=1 makes a failed build an error)"
    )
