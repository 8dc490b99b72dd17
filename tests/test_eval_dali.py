"""RandAugment in DALI (``nvidia.dali.auto_aug``, DALI's CPU backend): each operation of the DALI suite at
the recipe's magnitude 9 against our torch operation, and the fine-tuning loader and CLI with
``--loader dali``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali", reason="DALI not installed")

from fastmae.data import build_loader
from fastmae.data.synthetic import make_labelled_dataset
from fastmae.eval import dali_randaugment as dra
from fastmae.eval import randaugment as ra

H, W, COPIES = 20, 24, 8
_yy, _xx = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
SMOOTH = np.stack([40 + 8 * _xx, 30 + 9 * _yy, 200 - 4 * _xx - 3 * _yy], -1).clip(0, 255).astype(np.uint8)
NOISY = np.random.default_rng(1).integers(20, 230, (H, W, 3), dtype=np.uint8)
GEOMETRIC = {"Rotate": {}, "ShearX": {}, "ShearY": {}, "TranslateXRel": {"shape": [H, W]},
             "TranslateYRel": {"shape": [H, W]}}


def _dali_op(name: str, image: np.ndarray) -> list[np.ndarray]:
    """``COPIES`` runs of DALI's stand-in for operation ``name`` at magnitude 9 (each with its own sign draw)."""
    from nvidia.dali import fn, pipeline_def
    from nvidia.dali.auto_aug.rand_augment import apply_rand_augment

    kwargs = {"fill_value": 128, **GEOMETRIC[name]} if name in GEOMETRIC else {}

    @pipeline_def(batch_size=COPIES, num_threads=1, device_id=None, seed=3, enable_conditionals=True)
    def pipe():
        images = fn.external_source(source=lambda: [image] * COPIES, batch=True, layout="HWC")
        return apply_rand_augment([dra.operations()[name]], images, n=1, m=dra.magnitude_bin(9.0),
                                  num_magnitude_bins=dra.MAGNITUDE_BINS, **kwargs)

    pipeline = pipe()
    pipeline.build()
    (out,) = pipeline.run()
    return [np.array(out[i]) for i in range(COPIES)]


def _torch_op(name: str, image: np.ndarray, sign: float) -> np.ndarray:
    op, level = ra.OPS[name]

    class SignDraw:  # the level's only random draw is the sign
        def uniform(self) -> float:
            return sign

    img = torch.from_numpy(image).permute(2, 0, 1).float()
    return op(img, level(9.0, SignDraw())).round().clamp(0, 255).permute(1, 2, 0).numpy()


def test_the_dali_suite_is_our_operations_padded_with_identities():
    assert tuple(dra.operations()) == tuple(ra.OPS)
    suite = dra.suite()
    assert len(suite) == 2 * len(ra.OPS) and all(op.name == "identity" for op in suite[len(ra.OPS):])
    assert dra.magnitude_bin(9.0) == 90 and dra.magnitude_bin(0.5) == 5
    with pytest.raises(ValueError, match="magnitude"):
        dra.magnitude_bin(11)


# equalize is left out: DALI's lookup table is OpenCV's, not PIL's (see docs/eval.md)
@pytest.mark.parametrize("name", [n for n in ra.OPS if n != "Equalize"])
def test_dali_operation_matches_ours_at_magnitude_9(name, monkeypatch):
    monkeypatch.setattr(ra, "FILL", (128.0, 128.0, 128.0))  # DALI fills with one grey value
    for image in (SMOOTH, NOISY):
        ours = [_torch_op(name, image, sign) for sign in (0.0, 1.0)]  # + and - where the sign is drawn
        for dali in _dali_op(name, image):
            diff = min((np.abs(dali.astype(np.float32) - o) for o in ours), key=lambda d: d.mean())
            if name == "SharpnessIncreasing":
                diff = diff[1:-1, 1:-1]  # DALI filters the border pixels too; PIL and ours keep them
            assert diff.max() <= 1.0, (name, diff.max())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_labelled_dataset(tmp_path_factory.mktemp("labelled"), 16, 8, seed=0, image_size=(24, 24))


def _batches(data, rand_augment, seed=0):
    loader = build_loader(data, 4, 16, backend="dali", device="cpu", num_threads=1, seed=seed,
                          rand_augment=rand_augment)
    loader.set_epoch(0)
    return [images for images, _ in loader]


def test_finetune_loader_runs_rand_augment_in_dali(data):
    plain = _batches(data, None)
    augmented = _batches(data, "rand-m9-mstd0.5-inc1")
    assert len(augmented) == len(plain) == 4 and augmented[0].shape == (4, 3, 16, 16)
    assert all(torch.isfinite(images).all() for images in augmented)
    again = _batches(data, "rand-m9-mstd0.5-inc1")
    assert all(torch.equal(a, b) for a, b in zip(augmented, again))  # the pipeline seed fixes every draw
    assert not all(torch.equal(a, b) for a, b in zip(augmented, plain))


def test_finetune_cli_with_dali(data, tmp_path):
    from fastmae.cli import main as cli_main

    flags = ["finetune", "--model", "vit_test", "--data_path", str(data), "--nb_classes", "3", "--batch_size", "4",
             "--epochs", "1", "--warmup_epochs", "0", "--max_steps", "2", "--output_dir", str(tmp_path),
             "--num_workers", "1", "--no_progress", "--device", "cpu", "--loader", "dali", "--mixup", "0",
             "--cutmix", "0"]
    assert cli_main(flags) == 0
    assert (tmp_path / "log.txt").read_text().count("test_acc1") == 1
