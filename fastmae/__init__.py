"""fastmae: fast Masked Autoencoder pretraining for Vision Transformers.

Importing this package is cheap: it does not import triton, DALI, xformers or any
compiled extension. Those load on first use, from the submodules that need them
(``fastmae.ops``, ``fastmae.data``, ``fastmae.models``, ``fastmae.train``).
"""

from fastmae._version import __version__

__all__ = ["__version__"]
