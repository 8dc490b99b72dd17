"""The evaluation recipe pieces against values computed by hand (fastmae.eval)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from fastmae.eval import randaugment as ra
from fastmae.eval.drop_path import drop_path, drop_path_rates
from fastmae.eval.erasing import erase_boxes, random_erase
from fastmae.eval.knn import knn_scores
from fastmae.eval.lars import LARS
from fastmae.eval.layer_decay import layer_decay_groups
from fastmae.eval.metrics import topk_correct
from fastmae.eval.mixup import Mixup, smooth_one_hot, soft_target_cross_entropy
from fastmae.eval.vit import build_classifier, mae_name
from fastmae.train.optim import adamw, set_lr


def test_layer_decay_groups_and_lr_scales():
    model = build_classifier("vit_test", 5, global_pool=True)  # depth 2: layers 0 (embed), 1, 2 (blocks), 3 (head)
    groups = layer_decay_groups(model, model.depth, weight_decay=0.05, layer_decay=0.5)
    by_param = {id(p): g for g in groups for p in g["params"]}
    expected_layer = {"cls_token": 0, "pos_embed": 0, "patch_embed.proj.weight": 0, "patch_embed.proj.bias": 0,
                      "blocks.0.attn.qkv.weight": 1, "blocks.1.mlp.fc2.bias": 2, "fc_norm.weight": 3,
                      "head.weight": 3, "head.bias": 3}
    params = dict(model.named_parameters())
    for name, layer in expected_layer.items():
        group = by_param[id(params[name])]
        assert group["lr_scale"] == 0.5 ** (3 - layer), name
    for name in ("cls_token", "pos_embed", "patch_embed.proj.bias", "blocks.0.norm1.weight", "head.bias"):
        assert by_param[id(params[name])]["weight_decay"] == 0.0, name
    for name in ("patch_embed.proj.weight", "blocks.1.attn.proj.weight", "head.weight"):
        assert by_param[id(params[name])]["weight_decay"] == 0.05, name
    assert sum(len(g["params"]) for g in groups) == len(params)  # every trainable tensor exactly once
    optimizer = adamw(groups, 1.0, betas=(0.9, 0.999))
    set_lr(optimizer, 0.1)
    lrs = {g["layer"]: float(g["lr"]) for g in optimizer.param_groups}
    assert lrs == pytest.approx({0: 0.1 / 8, 1: 0.1 / 4, 2: 0.1 / 2, 3: 0.1})


def test_lars_update_by_hand():
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # norm 5
    bias = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = LARS([weight, bias], lr=torch.tensor(0.5), weight_decay=0.1, momentum=0.9, trust_coefficient=0.01)
    weight.grad = torch.tensor([[0.7, -0.4]])
    bias.grad = torch.tensor([2.0])
    optimizer.step()
    update = np.array([0.7, -0.4]) + 0.1 * np.array([3.0, 4.0])  # [1.0, 0.0], norm 1
    ratio = 0.01 * 5.0 / 1.0
    mu_w = update * ratio
    w1 = np.array([3.0, 4.0]) - 0.5 * mu_w
    assert weight.detach().numpy()[0] == pytest.approx(w1)
    assert bias.item() == pytest.approx(1.0 - 0.5 * 2.0)  # 1-D: no decay, no trust ratio
    # a second step uses the momentum; a found_inf step changes nothing
    weight.grad = torch.zeros(1, 2)
    bias.grad = torch.zeros(1)
    optimizer.step()
    update2 = 0.1 * w1
    mu_w2 = 0.9 * mu_w + update2 * (0.01 * np.linalg.norm(w1) / np.linalg.norm(update2))
    assert weight.detach().numpy()[0] == pytest.approx(w1 - 0.5 * mu_w2, rel=1e-6)
    assert bias.item() == pytest.approx(0.0 - 0.5 * 0.9 * 2.0)
    before = (weight.detach().clone(), bias.detach().clone(), optimizer.state[weight]["mu"].clone())
    optimizer.found_inf = torch.tensor(1.0)
    weight.grad = torch.full((1, 2), float("nan"))
    optimizer.step()
    assert torch.equal(weight.detach(), before[0]) and torch.equal(bias.detach(), before[1])
    assert torch.equal(optimizer.state[weight]["mu"], before[2])


def _constant_batch(n: int) -> torch.Tensor:
    """Sample i is the constant image i."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 8, 10).clone()


def test_mixup_mixes_images_and_labels_with_one_lambda():
    n, k = 6, 4
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    mixup = Mixup(k, mixup_alpha=0.8, cutmix_alpha=0.0, smoothing=0.1)
    images, target = mixup(_constant_batch(n), labels, np.random.default_rng(3))
    lam = 1.0 - images[0, 0, 0, 0].item() / (n - 1)  # sample 0 = lam * 0 + (1 - lam) * (n - 1)
    expected_images = lam * torch.arange(n) + (1 - lam) * torch.arange(n).flip(0)
    assert torch.allclose(images[:, 0, 0, 0], expected_images.float(), atol=1e-6)
    on, off = 1 - 0.1 + 0.1 / k, 0.1 / k
    one_hot = torch.full((n, k), off)
    one_hot[torch.arange(n), labels] = on
    assert torch.allclose(target, lam * one_hot + (1 - lam) * one_hot.flip(0), atol=1e-6)
    assert torch.allclose(target.sum(1), torch.ones(n))


def test_cutmix_pastes_a_box_and_weights_labels_by_area():
    n, k = 4, 3
    labels = torch.tensor([0, 1, 2, 1])
    mixup = Mixup(k, mixup_alpha=0.0, cutmix_alpha=1.0, smoothing=0.0)
    for seed in range(5):
        images, target = mixup(_constant_batch(n), labels, np.random.default_rng(seed))
        pasted = images[0, 0] == n - 1  # sample 0 takes its box from sample n-1
        assert torch.equal(images[0, 0][~pasted], torch.zeros(int((~pasted).sum())))
        rows, cols = pasted.any(1).nonzero().flatten(), pasted.any(0).nonzero().flatten()
        if pasted.any():  # the pasted pixels form one rectangle
            assert pasted[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        lam = 1.0 - pasted.float().mean().item()
        assert target[0].tolist() == pytest.approx([lam, 1 - lam, 0.0])  # partner: sample 3, class 1
        assert target[1].tolist() == pytest.approx([0.0, lam, 1 - lam])  # partner: sample 2, class 2


def test_mixup_off_is_label_smoothing_and_odd_batches_are_refused():
    labels = torch.tensor([2, 0, 1])
    images, target = Mixup(3, 0.8, 1.0, prob=0.0, smoothing=0.3)(_constant_batch(3), labels,
                                                                  np.random.default_rng(0))
    assert torch.equal(images, _constant_batch(3))
    assert torch.allclose(target, smooth_one_hot(labels, 3, 0.3))
    assert target[0].tolist() == pytest.approx([0.1, 0.1, 0.8])
    with pytest.raises(ValueError, match="even"):
        Mixup(3)(_constant_batch(3), labels, np.random.default_rng(0))
    logits = torch.randn(3, 3)
    assert soft_target_cross_entropy(logits, smooth_one_hot(labels, 3, 0.0)) == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)


def test_drop_path():
    torch.manual_seed(0)
    x = torch.ones(4000, 3, 5)
    out = drop_path(x, 0.25, training=True)
    per_sample = out.view(4000, -1)
    assert set(per_sample.unique().tolist()) <= {0.0, torch.tensor(1 / 0.75).item()}
    assert torch.all(per_sample == per_sample[:, :1])  # whole sample dropped or kept
    assert (per_sample[:, 0] == 0).float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert torch.equal(drop_path(x, 0.25, training=False), x)
    assert drop_path_rates(0.3, 4) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    model = build_classifier("vit_test", 3, drop_path_rate=0.2)
    assert [b.drop_prob for b in model.blocks] == pytest.approx([0.0, 0.2])


def test_linear_probe_head_is_batchnorm_without_affine():
    model = build_classifier("vit_test", 3, global_pool=False, linear_probe=True)
    bn, linear = model.head
    assert bn.weight is None and bn.bias is None and bn.eps == 1e-6
    head_keys = {k for k in model.state_dict() if k.startswith("head.")}
    assert head_keys == {"head.0.num_batches_tracked", "head.0.running_mean", "head.0.running_var", "head.1.bias",
                         "head.1.weight"}
    x = torch.randn(7, 32) * 3 + 1
    expected = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-6)
    assert torch.allclose(bn.train()(x), expected, atol=1e-5)
    assert linear.weight.std().item() == pytest.approx(0.01, rel=0.3)


def test_knn_vote_against_brute_force():
    gen = torch.Generator().manual_seed(0)
    bank, labels = torch.randn(50, 8, generator=gen), torch.randint(0, 4, (50,), generator=gen)
    queries = torch.randn(7, 8, generator=gen)
    votes = knn_scores(queries, bank, labels, 4, k=5, temperature=0.1, chunk=3)
    for i, q in enumerate(queries):
        sims = [float(torch.dot(q, b) / (q.norm() * b.norm())) for b in bank]
        nearest = sorted(range(50), key=lambda j: -sims[j])[:5]
        expected = [0.0] * 4
        for j in nearest:
            expected[int(labels[j])] += math.exp(sims[j] / 0.1)
        assert votes[i].tolist() == pytest.approx(expected, rel=1e-4)


def test_topk_counts():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.2, 0.5, 0.3]])
    target = torch.tensor([1, 1, 2])  # ranks of the true class: 1st, 2nd, 2nd
    assert topk_correct(scores, target, (1, 2)).tolist() == [1.0, 3.0]
    assert topk_correct(scores, target, (1, 5)).tolist() == [1.0, 3.0]  # k capped at the 3 classes
    assert topk_correct(scores, target, (1,), valid=torch.tensor([False, True, True])).tolist() == [0.0]


def test_random_erasing_boxes():
    boxes = erase_boxes(400, 20, 30, np.random.default_rng(0), prob=0.25)
    erased = boxes[:, 2] > 0
    assert erased.mean() == pytest.approx(0.25, abs=0.07)
    top, left, h, w = boxes[erased].T
    assert np.all(top + h <= 20) and np.all(left + w <= 30) and np.all(h < 20) and np.all(w < 30)
    assert np.all(h * w >= 0.02 * 600 * 0.5) and np.all(h * w <= 600 / 3 * 1.3)  # area share, up to rounding
    images = torch.full((2, 3, 20, 30), 7.0)
    out = random_erase(images, np.array([[2, 3, 4, 5], [0, 0, 0, 0]]))
    changed = out != 7.0
    assert changed[0, :, 2:6, 3:8].all() and changed.sum() == 3 * 4 * 5


def _pil(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels)


@pytest.mark.parametrize("op, pil_op, level", [
    (ra.invert, ImageOps.invert, 0.0),
    (ra.auto_contrast, ImageOps.autocontrast, 0.0),
    (ra.equalize, ImageOps.equalize, 0.0),
    (ra.posterize, lambda im: ImageOps.posterize(im, 3), 3),
    (ra.solarize, lambda im: ImageOps.solarize(im, 100), 100),
    (ra.brightness, lambda im: ImageEnhance.Brightness(im).enhance(1.6), 1.6),
    (ra.color, lambda im: ImageEnhance.Color(im).enhance(0.4), 0.4),
    (ra.contrast, lambda im: ImageEnhance.Contrast(im).enhance(1.7), 1.7),
    (ra.sharpness, lambda im: ImageEnhance.Sharpness(im).enhance(1.8), 1.8),
])
def test_randaugment_ops_match_pil(op, pil_op, level):
    pixels = np.random.default_rng(1).integers(20, 230, (12, 14, 3), dtype=np.uint8)
    ours = op(torch.from_numpy(pixels).permute(2, 0, 1).float(), level).round().clamp(0, 255)
    expected = np.asarray(pil_op(_pil(pixels))).astype(np.float32)
    assert np.abs(ours.permute(1, 2, 0).numpy() - expected).max() <= 1.0


def test_randaugment_geometry_and_policy():
    pixels = np.zeros((9, 9, 3), dtype=np.uint8)
    pixels[4, 6] = 255
    img = torch.from_numpy(pixels).permute(2, 0, 1).float()
    rotated = ra.rotate(img, 90.0)  # counter-clockwise about the centre: (row 4, col 6) -> (row 2, col 4)
    assert rotated[0].argmax().item() == 2 * 9 + 4
    shifted = ra.translate_x(img, 2 / 9)  # samples 2 pixels to the right: the dot moves left by 2
    assert shifted[0].argmax().item() == 4 * 9 + 4
    assert ra.parse_policy("rand-m9-mstd0.5-inc1") == (2, 9.0, 0.5)
    with pytest.raises(ValueError, match="--aa"):
        ra.parse_policy("original")
    out = ra.rand_augment(pixels, np.random.default_rng(0))
    assert out.shape == pixels.shape and out.dtype == np.uint8
    assert np.array_equal(out, ra.rand_augment(pixels, np.random.default_rng(0)))


def test_model_names_follow_the_official_rule():
    assert mae_name("vit_base_patch16") == "mae_vit_base_patch16"
    assert mae_name("vit_tiny") == "mae_vit_tiny"
    with pytest.raises(ValueError, match="unknown encoder"):
        mae_name("vit_gigantic")
    with pytest.raises(ValueError, match="encoder name"):
        mae_name("mae_vit_base_patch16")
