"""RandAugment inside a DALI pipeline, with ``nvidia.dali.auto_aug.rand_augment``.

The same policy as :mod:`fastmae.eval.randaugment` (``rand-m9-mstd0.5-inc1``: 2 draws from the 15
"increasing" operations, each run with probability 0.5, strengths scaled by magnitude / 10), mapped
to DALI's building blocks:

- the suite is our 15 operations with our strengths at magnitude 10 (DALI's own suite differs: no
  invert or solarize-add, an identity, posterize kept at 4-8 bits);
- "run with probability 0.5" is the suite followed by as many identities: a uniform draw then
  picks identity half the time and each operation uniformly otherwise, the same distribution;
- the magnitude is fixed at ``magnitude`` (on 101 bins, so 0.1 steps): DALI's RandAugment takes one
  magnitude for the whole pipeline, so the per-draw N(magnitude, 0.5) noise of ``mstd`` is not
  reproduced (at m9 it moves the strength by about 5% either way);
- geometric operations fill with grey 128 (DALI takes one fill value; ours fills with the dataset
  mean colour), sample bilinearly, and sharpness filters the border pixels too.

It runs wherever the pipeline runs: on the GPU after nvJPEG, or on DALI's CPU backend.
"""

from __future__ import annotations

from fastmae.eval import randaugment as ra

MAGNITUDE_BINS = 101  # bin b is magnitude b / 10 on the 0..10 scale


def operations() -> dict:
    """name -> the DALI augmentation standing for that operation of :data:`fastmae.eval.randaugment.OPS`."""
    from nvidia.dali.auto_aug import augmentations as a

    shift = a.shift_enhance_range  # factor 1 + signed strength
    return {
        "AutoContrast": a.auto_contrast,
        "Equalize": a.equalize,
        "Invert": a.invert,
        "Rotate": a.rotate.augmentation((0, ra.ROTATE_DEGREES), True),
        # bits kept: POSTERIZE_BITS at magnitude 0 down to 0 at 10 (DALI then keeps at least one, as ours does)
        "PosterizeIncreasing": a.posterize.augmentation((ra.POSTERIZE_BITS, 0), False, a.poster_mask_uint8),
        "SolarizeIncreasing": a.solarize.augmentation((256, 0)),
        "SolarizeAdd": a.solarize_add.augmentation((0, ra.SOLARIZE_ADD), False),
        "ColorIncreasing": a.color.augmentation((0, ra.ENHANCE), True, shift),
        "ContrastIncreasing": a.contrast.augmentation((0, ra.ENHANCE), True, shift),
        "BrightnessIncreasing": a.brightness.augmentation((0, ra.ENHANCE), True, shift),
        "SharpnessIncreasing": a.sharpness.augmentation((0, ra.ENHANCE), True, a.sharpness_kernel),
        "ShearX": a.shear_x.augmentation((0, ra.SHEAR), True),
        "ShearY": a.shear_y.augmentation((0, ra.SHEAR), True),
        "TranslateXRel": a.translate_x.augmentation((0, ra.TRANSLATE), True),
        "TranslateYRel": a.translate_y.augmentation((0, ra.TRANSLATE), True),
    }


def suite() -> list:
    """The operations, then as many identities: a uniform draw runs each operation with probability 1/2."""
    from nvidia.dali.auto_aug import augmentations as a

    if ra.APPLY_PROB != 0.5:
        raise RuntimeError(f"the DALI suite pads with identities for an apply probability of 0.5, not "
                           f"{ra.APPLY_PROB}")
    ops = list(operations().values())
    return ops + [a.identity] * len(ops)


def magnitude_bin(magnitude: float) -> int:
    """The DALI magnitude bin of ``magnitude`` (0..10, 0.1 steps)."""
    if not 0 <= magnitude <= ra.MAX_LEVEL:
        raise ValueError(f"--aa: RandAugment magnitude must be in [0, {ra.MAX_LEVEL:g}], got {magnitude}")
    return round(magnitude * (MAGNITUDE_BINS - 1) / ra.MAX_LEVEL)


def rand_augment(images, policy: tuple[int, float, float], size: tuple[int, int]):
    """DALI node: ``images`` (uint8 HWC, ``size`` = (H, W)) with RandAugment ``policy`` = (ops, magnitude, std).

    The pipeline must be built with ``enable_conditionals=True``; its seed fixes every draw.
    """
    from nvidia.dali.auto_aug.rand_augment import apply_rand_augment

    num_ops, magnitude, _magnitude_std = policy  # the std has no DALI counterpart (see the module doc)
    return apply_rand_augment(suite(), images, n=num_ops, m=magnitude_bin(magnitude),
                              num_magnitude_bins=MAGNITUDE_BINS, shape=list(size), fill_value=128)

