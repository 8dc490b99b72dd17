"""patchify_gather against the reference (patchify then gather), on the Triton path and the torch path.

Tensors live on ``device`` (tests/conftest.py): on CPU the kernels run in the interpreter, on CUDA compiled."""

from __future__ import annotations

import pytest
import torch

from fastmae import reference
from fastmae.ops import patchify_gather, random_masking
from fastmae.ops.gather import bytes_moved
from tests.op_testing import BACKENDS, DTYPES, assert_bitwise_equal


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, use_backend) -> str:  # type: ignore[no-untyped-def]
    """Run the test on one backend, in debug mode so outputs start poisoned (NaN)."""
    return use_backend(request.param, debug=True)


def random_ids(batch: int, num_patches: int, num_keep: int, device: torch.device) -> torch.Tensor:
    """Distinct random patch indices per row, (batch, num_keep) int64."""
    return torch.rand(batch, num_patches, device=device).argsort(dim=1)[:, :num_keep].contiguous()


def reference_gather(imgs: torch.Tensor, ids_keep: torch.Tensor, patch: int) -> torch.Tensor:
    """The official path: patchify every patch, then gather the visible rows."""
    patches = reference.patchify(imgs, patch)
    return torch.gather(patches, 1, ids_keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))


def loop_gather(imgs: torch.Tensor, ids_keep: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """An independent oracle by slicing: works for images (ph, pw) and videos (pt, ph, pw)."""
    video = imgs if imgs.dim() == 5 else imgs.unsqueeze(2)
    pt, ph, pw = patch if len(patch) == 3 else (1, *patch)
    height, width = video.shape[-2:]
    grid_h, grid_w = height // ph, width // pw
    rows = []
    for b, ids in enumerate(ids_keep.tolist()):
        for idx in ids:
            t0, h0, w0 = idx // (grid_h * grid_w) * pt, (idx // grid_w) % grid_h * ph, idx % grid_w * pw
            tubelet = video[b, :, t0 : t0 + pt, h0 : h0 + ph, w0 : w0 + pw]
            rows.append(tubelet.permute(1, 2, 3, 0).reshape(-1))
    return torch.stack(rows).reshape(*ids_keep.shape, -1)


def check_forward_backward(imgs: torch.Tensor, ids_keep: torch.Tensor, patch: int) -> None:
    """Forward and both gradient kinds (random, and .sum()'s stride-0) bitwise equal to the reference."""
    ours_in = imgs.detach().clone().requires_grad_()
    ref_in = imgs.detach().clone().requires_grad_()
    out = patchify_gather(ours_in, ids_keep, patch)
    expected = reference_gather(ref_in, ids_keep, patch)
    assert out.is_contiguous()
    assert_bitwise_equal(out, expected, "patches")

    grad = torch.randn_like(expected)
    grad[0, 0, 0] = -0.0  # autograd's scatter-add into zeros gives +0.0 here
    (ours_grad,) = torch.autograd.grad(out, ours_in, grad)
    (ref_grad,) = torch.autograd.grad(expected, ref_in, grad)
    assert_bitwise_equal(ours_grad, ref_grad, "grad imgs (random)")
    assert torch.equal(ours_grad.signbit(), ref_grad.signbit()), "grad imgs: signed zeros differ"

    (ours_grad,) = torch.autograd.grad(patchify_gather(ours_in, ids_keep, patch).sum(), ours_in)
    (ref_grad,) = torch.autograd.grad(reference_gather(ref_in, ids_keep, patch).sum(), ref_in)
    assert_bitwise_equal(ours_grad, ref_grad, "grad imgs (.sum())")


# (batch, chans, grid_h, grid_w, patch, keep): keep "1" or "L-1"
CASES = [
    (1, 3, 2, 3, 16, "1"),
    (2, 1, 7, 5, 14, "L-1"),
    (2, 3, 2, 2, 14, "L-1"),
    (1, 2, 3, 5, 5, "1"),  # C = 2 (no fixed-channel kernel), odd patch width
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}c{}g{}x{}p{}k{}".format(*c))
def test_matches_reference(backend: str, case: tuple, dtype: torch.dtype, device: torch.device) -> None:
    batch, chans, grid_h, grid_w, patch, keep = case
    num_patches = grid_h * grid_w
    num_keep = 1 if keep == "1" else num_patches - 1
    imgs = torch.randn(batch, chans, grid_h * patch, grid_w * patch, device=device).to(dtype)
    check_forward_backward(imgs, random_ids(batch, num_patches, num_keep, device), patch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_native_gather_of_a_large_output(use_backend, dtype: torch.dtype) -> None:  # type: ignore[no-untyped-def]
    """A ViT-B/16 batch whose kept patches fill over 1 MiB: the native CPU gather streams its stores from
    there (kernels/cpu/patchify_gather.cpp, kStreamMinBytes); forward and backward stay bitwise."""
    use_backend("native", debug=True)
    imgs = torch.randn(16, 3, 224, 224).to(dtype)
    ids_keep = random_ids(16, 196, 49, imgs.device)
    assert 16 * 49 * 768 * imgs.element_size() >= 1 << 20
    check_forward_backward(imgs, ids_keep, 16)


def test_patch_of_several_programs(backend: str, device: torch.device) -> None:
    """P = 3072 > 2048: two programs per patch, which address the image in the row's order (not in the device
    check's selection: its compiles are counted there)."""
    imgs = torch.randn(1, 3, 64, 32, device=device)
    check_forward_backward(imgs, random_ids(1, 2, 1, device), 32)


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "expanded"])
def test_non_contiguous_images(backend: str, layout: str, device: torch.device) -> None:
    patch, batch = 14, 2
    if layout == "channels_last":
        imgs = torch.randn(batch, 3, 28, 42, device=device).contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":  # every other channel of a wider, cropped batch
        imgs = torch.randn(batch, 6, 30, 45, device=device)[:, ::2, 1:29, 2:44]
    else:  # a stride-0 batch dimension
        imgs = torch.randn(1, 3, 28, 42, device=device).expand(batch, -1, -1, -1)
    assert not imgs.is_contiguous()
    check_forward_backward(imgs, random_ids(batch, 6, 4, device), patch)


def test_rectangular_patches_and_images(backend: str, device: torch.device) -> None:
    imgs = torch.randn(2, 3, 12, 40, device=device)
    ids_keep = random_ids(2, 3 * 5, 7, device)
    out = patchify_gather(imgs, ids_keep, (4, 8))
    assert_bitwise_equal(out, loop_gather(imgs, ids_keep, (4, 8)), "rectangular patches")


# (tubelet, video shape (C, T, H, W)); width-16 RGB tubelets take the native CPU kernels' AVX-512 or AVX2 path
VIDEO_CASES = [((2, 4, 4), (3, 6, 8, 12)), ((2, 16, 16), (3, 4, 32, 48))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", VIDEO_CASES, ids=lambda c: "t{}x{}x{}".format(*c[0]))
def test_video_tubelets(backend: str, case: tuple, dtype: torch.dtype, device: torch.device) -> None:
    tubelet, shape = case
    grid = [n // p for n, p in zip(shape[1:], tubelet, strict=True)]
    length = grid[0] * grid[1] * grid[2]
    videos = torch.randn(2, *shape, device=device).to(dtype).requires_grad_()
    ids_keep = random_ids(2, length, 5, device)
    out = patchify_gather(videos, ids_keep, tubelet)
    assert out.shape == (2, 5, tubelet[0] * tubelet[1] * tubelet[2] * shape[0])
    assert_bitwise_equal(out, loop_gather(videos.detach(), ids_keep, tubelet), "tubelets")
    # backward against autograd through the slicing oracle
    grad = torch.randn_like(out)
    (ours,) = torch.autograd.grad(out, videos, grad)
    (expected,) = torch.autograd.grad(loop_gather(videos, ids_keep, tubelet), videos, grad)
    assert_bitwise_equal(ours, expected, "grad videos")


def test_no_grad_kept_when_not_required(backend: str, device: torch.device) -> None:
    out = patchify_gather(torch.randn(1, 3, 16, 16, device=device), random_ids(1, 1, 1, device), 16)
    assert not out.requires_grad


def test_double_backward_is_a_gather(backend: str, device: torch.device) -> None:
    imgs = torch.randn(1, 3, 16, 32, device=device, requires_grad=True)
    ids_keep = random_ids(1, 2, 1, device)
    grad_out = torch.randn(1, 1, 768, device=device, requires_grad=True)
    (grad_imgs,) = torch.autograd.grad(patchify_gather(imgs, ids_keep, 16), imgs, grad_out, create_graph=True)
    weights = torch.randn_like(grad_imgs)
    (grad_grad,) = torch.autograd.grad((grad_imgs * weights).sum(), grad_out)
    assert_bitwise_equal(grad_grad, reference_gather(weights, ids_keep, 16), "double backward")


def test_opcheck(backend: str, monkeypatch: pytest.MonkeyPatch, device: torch.device) -> None:
    monkeypatch.setenv("FASTMAE_DEBUG", "0")  # opcheck compares outputs; poison is only for unwritten checks
    imgs = torch.randn(2, 3, 8, 12, device=device, requires_grad=True)
    ids_keep = random_ids(2, 6, 3, device)
    torch.library.opcheck(torch.ops.fastmae.patchify_gather, (imgs, ids_keep, [4, 4]))
    grad = torch.randn(2, 3, 48, device=device)
    torch.library.opcheck(torch.ops.fastmae.patchify_gather_backward, (grad, ids_keep, [4, 4], [2, 3, 8, 12]))


def test_compiled_masking_and_gather_match_eager(
    backend: str, monkeypatch: pytest.MonkeyPatch, device: torch.device
) -> None:
    monkeypatch.setenv("FASTMAE_DEBUG", "0")  # debug checks sync on the host (a graph break)
    weight = torch.randn(2 * 2 * 3, 5, device=device)

    def step(imgs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        masking = random_masking(imgs.shape[0], 12, 0.75, noise=noise)
        visible = patchify_gather(imgs, masking.ids_keep, 2)
        return (visible @ weight).square().sum() + masking.mask.sum()

    imgs = torch.randn(2, 3, 6, 8, device=device)
    noise = torch.rand(2, 12, device=device)
    eager_in = imgs.clone().requires_grad_()
    compiled_in = imgs.clone().requires_grad_()
    eager_loss = step(eager_in, noise)
    eager_loss.backward()
    compiled_loss = torch.compile(step, fullgraph=True, backend="aot_eager")(compiled_in, noise)
    compiled_loss.backward()
    assert_bitwise_equal(compiled_loss, eager_loss, "loss")
    assert_bitwise_equal(compiled_in.grad, eager_in.grad, "grad imgs")


# one fp16 image with 2.15e9 > 2^31 elements (4.3 GB; on CPU, untouched pages stay unallocated)
HUGE_SIDE, HUGE_PATCH = 46352, 16


def far_patch_id() -> int:
    """The patch next to the last one of the huge image: its first pixel is past 2^31."""
    grid = HUGE_SIDE // HUGE_PATCH
    patch_id = grid * grid - 2
    top, left = patch_id // grid * HUGE_PATCH, patch_id % grid * HUGE_PATCH
    assert top * HUGE_SIDE + left > 2**31
    return patch_id


def patch_pixels(imgs: torch.Tensor, patch_id: int) -> torch.Tensor:
    """The (p, p) pixels of one patch of a one-channel huge image (a view)."""
    grid, patch = HUGE_SIDE // HUGE_PATCH, HUGE_PATCH
    top, left = patch_id // grid * patch, patch_id % grid * patch
    return imgs[0, 0, top : top + patch, left : left + patch]


@pytest.mark.parametrize("path", BACKENDS)
def test_int64_offsets_in_a_huge_image(path: str, use_backend, device: torch.device) -> None:  # type: ignore[no-untyped-def]
    use_backend(path)
    imgs = torch.empty(1, 1, HUGE_SIDE, HUGE_SIDE, dtype=torch.float16, device=device)
    patch_id = far_patch_id()
    values = torch.randn(HUGE_PATCH, HUGE_PATCH, device=device).to(torch.float16)
    patch_pixels(imgs, patch_id).copy_(values)
    out = patchify_gather(imgs, torch.tensor([[patch_id]], device=device), HUGE_PATCH)
    assert_bitwise_equal(out, values.reshape(1, 1, HUGE_PATCH * HUGE_PATCH), "far patch")


@pytest.mark.slow
@pytest.mark.parametrize("path", BACKENDS)
def test_int64_offsets_in_a_huge_image_backward(path: str, use_backend, cuda_device: torch.device) -> None:  # type: ignore[no-untyped-def]
    """The backward scatter into the huge image (a real 4.3 GB zeroed gradient: GPU only): the far patch and
    the first one get their gradient rows, every other pixel stays zero."""
    use_backend(path)
    imgs = torch.zeros(1, 1, HUGE_SIDE, HUGE_SIDE, dtype=torch.float16, device=cuda_device, requires_grad=True)
    patch_id = far_patch_id()
    ids_keep = torch.tensor([[patch_id, 0]], device=cuda_device)
    out = patchify_gather(imgs, ids_keep, HUGE_PATCH)
    grad_out = torch.randn(out.shape, device=cuda_device).to(torch.float16)
    (grad_imgs,) = torch.autograd.grad(out, imgs, grad_out)
    assert grad_imgs.shape == imgs.shape and grad_imgs.dtype == torch.float16
    far, first = (grad_out[0, k].reshape(HUGE_PATCH, HUGE_PATCH) for k in range(2))
    assert_bitwise_equal(patch_pixels(grad_imgs, patch_id), far, "grad far patch")
    assert_bitwise_equal(patch_pixels(grad_imgs, 0), first, "grad first patch")
    written = torch.count_nonzero(grad_imgs).item()
    assert written == torch.count_nonzero(grad_out).item(), f"{written} nonzero gradient pixels, expected 2 patches"


def test_debug_mode_rejects_ids_out_of_range(backend: str, device: torch.device) -> None:
    imgs = torch.randn(2, 3, 16, 32, device=device)
    with pytest.raises(ValueError, match=r"ids_keep holds patch index 2, outside the valid range \[0, 2\)"):
        patchify_gather(imgs, torch.tensor([[0], [2]], device=device), 16)
    with pytest.raises(ValueError, match=r"ids_keep holds patch index -1"):
        patchify_gather(imgs, torch.tensor([[-1], [0]], device=device), 16)
    with pytest.raises(ValueError, match="ids_keep repeats a patch index"):
        patchify_gather(imgs, torch.tensor([[1, 1], [0, 1]], device=device), 16)


def ids(*shape: int, dtype: torch.dtype = torch.long, device: str = "cpu") -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype, device=device)


@pytest.mark.parametrize(
    ("imgs", "ids_keep", "patch_size", "error", "message"),
    [
        (torch.zeros(3, 16, 16), ids(3, 1), 16, ValueError, r"imgs must be images"),
        (torch.zeros(1, 3, 30, 32), ids(1, 1), 16, ValueError, r"height 30 .* crop or resize to 16"),
        (torch.zeros(1, 3, 32, 40), ids(1, 1), 16, ValueError, r"width 40 .* resize to 32"),
        (torch.zeros(1, 3, 16, 16).int(), ids(1, 1), 16, TypeError, r"imgs must be float32"),
        (torch.zeros(1, 3, 16, 16), ids(1, 1, dtype=torch.int32), 16, TypeError, r"ids_keep must be int64"),
        (torch.zeros(1, 3, 16, 16), ids(1), 16, ValueError, r"ids_keep must have shape \(N, K\)"),
        (torch.zeros(2, 3, 16, 16), ids(1, 1), 16, ValueError, r"ids_keep .* N = 2"),
        (torch.zeros(1, 3, 16, 16), ids(1, 2), 16, ValueError, r"between 1 and L = 1"),
        (torch.zeros(1, 3, 16, 16), ids(1, 0), 16, ValueError, r"got K = 0"),
        (torch.zeros(1, 3, 16, 16), ids(1, 1, device="meta"), 16, ValueError, r"ids_keep must be on cpu"),
        (torch.zeros(1, 3, 16, 16), [[0]], 16, TypeError, r"ids_keep must be a torch.Tensor"),
        (torch.zeros(1, 3, 16, 16), ids(1, 1), 0, ValueError, r"patch_size must be positive"),
        (torch.zeros(1, 3, 16, 16), ids(1, 1), (16, 16, 1), TypeError, r"patch_size must be an int or a pair"),
        (torch.zeros(1, 3, 2, 16, 16), ids(1, 1), 16, TypeError, r"tubelet \(pt, ph, pw\)"),
        (torch.zeros(1, 3, 3, 16, 16), ids(1, 1), (2, 16, 16), ValueError, r"frames 3 .* crop or resize to 2"),
    ],
)
def test_bad_inputs_name_the_argument(imgs, ids_keep, patch_size, error, message) -> None:
    with pytest.raises(error, match=message):
        patchify_gather(imgs, ids_keep, patch_size)


def test_bytes_moved() -> None:
    # forward: visible pixels read + written, plus the int64 ids
    visible = 2 * 49 * 768 * 2
    assert bytes_moved((2, 3, 224, 224), 49, 16, torch.bfloat16, backward=False) == 2 * visible + 2 * 49 * 8
    # backward also writes the whole image gradient once (the zeros)
    assert bytes_moved((2, 3, 224, 224), 49, 16, torch.bfloat16, backward=True) == (
        2 * visible + 2 * 49 * 8 + 2 * 3 * 224 * 224 * 2
    )
    assert bytes_moved((1, 3, 4, 32, 32), 2, (2, 16, 16), torch.float32, backward=False) == 2 * 2 * 1536 * 4 + 16


def test_native_kernels_check_their_inputs(use_backend) -> None:  # type: ignore[no-untyped-def]
    """The native kernels check shapes and id values themselves (called directly here: the API checks first)."""
    use_backend("native")
    kernels = torch.ops.fastmae_kernels
    imgs = torch.randn(2, 3, 8, 8)
    with pytest.raises(TypeError, match="ids_keep must be int64"):
        kernels.patchify_gather(imgs, torch.zeros(2, 1, dtype=torch.int32), [4, 4])
    with pytest.raises(ValueError, match="outside"):
        kernels.patchify_gather(imgs, torch.full((2, 1), 4), [4, 4])
    with pytest.raises(ValueError, match="not divisible"):
        kernels.patchify_gather(imgs, torch.zeros(2, 1, dtype=torch.long), [3, 3])
    with pytest.raises(ValueError, match="patch_size must have 2 entries"):
        kernels.patchify_gather(imgs, torch.zeros(2, 1, dtype=torch.long), [4, 4, 4])
    with pytest.raises(ValueError, match="must not repeat a patch"):
        repeated = torch.zeros(2, 2, dtype=torch.long)
        kernels.patchify_gather_backward(torch.randn(2, 2, 48), repeated, [4, 4], [2, 3, 8, 8])
