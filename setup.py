"""Build script for fastmae.

torch is never imported at module scope: a CPU-only ``pip install -e .`` must work
with no CUDA, no cmake and no torch in the build environment. The optional native
build (kernels/ + CMakeLists.txt) is driven from ``setup_native.py``-style hooks
below only when asked for and possible.
"""

from __future__ import annotations

import re
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def read_version() -> str:
    text = (ROOT / "fastmae" / "_version.py").read_text()
    match = re.search(r'__version__\s*=\s*"([^"]+)"', text)
    if match is None:
        raise RuntimeError("fastmae/_version.py does not define __version__")
    return match.group(1)


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
        "test": TEST_REQUIRES,
    },
    entry_points={"console_scripts": ["fastmae=fastmae.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
