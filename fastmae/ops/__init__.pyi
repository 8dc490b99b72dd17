# Typed re-exports of fastmae.ops for type checkers and editors; at run time they load lazily from the
# table ``_EXPORTS`` of __init__.py (tests/test_package.py keeps the two equal).
from .blend import mask_token_blend as mask_token_blend
from .gather import patchify_gather as patchify_gather
from .loss import masked_mse_loss as masked_mse_loss
from .loss import removed_ids as removed_ids
from .mask_generators import block_masking as block_masking
from .mask_generators import grid_masking as grid_masking
from .mask_generators import tube_masking as tube_masking
from .masking import MaskingResult as MaskingResult
from .masking import random_masking as random_masking
from .patches import patchify as patchify
from .patches import unpatchify as unpatchify
from .unshuffle import unshuffle_with_mask_token as unshuffle_with_mask_token

