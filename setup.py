"""Build script for fastmae.

torch is never imported at module scope: a CPU-only ``pip install -e .`` must work
with no CUDA, no cmake and no torch in the build environment. The optional native
build (kernels/ + CMakeLists.txt) runs through CMake from :class:`CMakeBuild` when cmake is
on PATH and ``FASTMAE_BUILD_NATIVE`` is not ``0``; it writes ``fastmae/_fastmae_native.so``,
which ``fastmae/_native.py`` loads lazily. It needs the installed torch, so install with
``--no-build-isolation``. A failed native build is a warning and leaves a pure-Python install;
``FASTMAE_BUILD_NATIVE=1`` makes it an error. ``FASTMAE_NATIVE_MARCH=native`` builds the CPU kernels for
this machine's ISA (faster, not portable: never for wheels); unset, they target the compiler's baseline.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def read_version() -> str:
    text = (ROOT / "fastmae" / "_version.py").read_text()
    match = re.search(r'__version__\s*=\s*"([^"]+)"', text)
    if match is None:
        raise RuntimeError("fastmae/_version.py does not define __version__")
    return match.group(1)


NATIVE_ENV = "FASTMAE_BUILD_NATIVE"  # "0": skip the native build, "1": require it, unset: best effort
MARCH_ENV = "FASTMAE_NATIVE_MARCH"  # the CPU kernels' -march ("native" for a source build); unset: portable
NATIVE_LIBRARY = "_fastmae_native"


class CMakeExtension(Extension):
    """The native library, built by CMakeLists.txt (no sources for setuptools to compile)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Runs CMake for the native library; a failure is a warning unless FASTMAE_BUILD_NATIVE=1."""

    def run(self) -> None:
        mode = os.environ.get(NATIVE_ENV, "").strip()
        if mode == "0":
            print(f"fastmae: {NATIVE_ENV}=0, skipping the native extension (pure-Python install)")
            return
        try:
            if shutil.which("cmake") is None:
                raise RuntimeError("cmake is not on PATH")
            for ext in self.extensions:
                self.build_cmake(ext)
        except Exception as error:  # a native build is optional unless asked for
            if mode == "1":
                message = f"fastmae: the native extension failed to build ({NATIVE_ENV}=1): {error}"
                raise RuntimeError(message) from error
            self.warn(
                f"fastmae: the native extension was not built ({error}); installing the pure-Python package. "
                f"Set {NATIVE_ENV}=1 to make this an error, {NATIVE_ENV}=0 to skip the attempt."
            )

    def build_cmake(self, ext: Extension) -> None:
        import torch  # only here: the build step needs the installed torch (--no-build-isolation)

        # Editable installs (and build_ext --inplace) import from the source tree: build into it.
        package_dir = ROOT / "fastmae" if self.inplace else Path(self.build_lib).resolve() / "fastmae"
        package_dir.mkdir(parents=True, exist_ok=True)
        build_dir = Path(self.build_temp).resolve() / "native"
        build_dir.mkdir(parents=True, exist_ok=True)
        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir),
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DFASTMAE_NATIVE_OUTPUT_DIR={package_dir}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DFASTMAE_NATIVE_MARCH={os.environ.get(MARCH_ENV, '').strip()}",
        ]  # fmt: skip
        if shutil.which("ninja"):
            configure += ["-G", "Ninja"]
        subprocess.run(configure, check=True)
        jobs = str(os.cpu_count() or 1)
        subprocess.run(["cmake", "--build", str(build_dir), "--config", "Release", "-j", jobs], check=True)
        built = list(package_dir.glob(f"{NATIVE_LIBRARY}.*"))
        if not built:
            raise RuntimeError(f"cmake finished but wrote no {NATIVE_LIBRARY} library into {package_dir}")
        print(f"fastmae: built the native extension {built[0]}")


TEST_REQUIRES = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "pytest-benchmark>=4",
    "ruff>=0.6",
    "pillow>=10",
    "matplotlib>=3.7",
    "nvidia-dali-cuda130>=2.0; platform_system == 'Linux'",
    "xformers>=0.0.30; platform_system == 'Linux'",
    "tensorboard>=2.14",
]

setup(
    name="fastmae",
    version=read_version(),
    description="Fast, lean Masked Autoencoder (MAE) pretraining of Vision Transformers with fused Triton ops.",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["fastmae", "fastmae.*"]),
    package_data={"fastmae": ["py.typed"]},
    install_requires=[
        # A floor, never a pin: a pin would drag CUDA wheels onto a CPU machine.
        "torch>=2.6",
        "numpy>=1.24",
        "pillow>=10",
        "triton>=3.2; platform_system == 'Linux'",
    ],
    extras_require={
        "dali": ["nvidia-dali-cuda130>=2.0"],
        "dali-cu12": ["nvidia-dali-cuda120>=2.0"],
        "xformers": ["xformers>=0.0.30"],
        "bench": ["pytest-benchmark>=4", "matplotlib>=3.7"],
        "tensorboard": ["tensorboard>=2.14"],
        "plots": ["matplotlib>=3.7"],  # loss_curve.png of the demo; without it the demo says so and goes on
        "config": ["pyyaml>=6"],  # OUTPUT_DIR/config.yaml (JSON without it)
        "wandb": ["wandb>=0.16"],
        "test": TEST_REQUIRES,
    },
    entry_points={"console_scripts": ["fastmae=fastmae.cli:main"]},
    ext_modules=[CMakeExtension("fastmae._fastmae_native")],
    cmdclass={"build_ext": CMakeBuild},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
