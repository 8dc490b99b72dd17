"""Masking generators: the MaskingResult contract, each generator's pattern, determinism and bad input.

Results are placed on ``device``; block masking draws on the host with a CPU generator either way. Host-only
cases (sample_block_mask, meta placement) run in the CPU suite only; the bad-input checks run on CPU inputs.
"""

from __future__ import annotations

import pytest
import torch

from fastmae.ops import MaskingResult, block_masking, grid_masking, random_masking, tube_masking
from fastmae.ops.mask_generators import sample_block_mask


def check_contract(result: MaskingResult, batch: int, num_patches: int, num_keep: int) -> None:
    """Exactly K kept per row, ids_keep = ids_shuffle[:, :K], ids_restore inverts ids_shuffle, mask matches."""
    assert result.num_keep == num_keep and isinstance(result.num_keep, int)
    assert result.ids_shuffle.shape == result.ids_restore.shape == result.mask.shape == (batch, num_patches)
    assert result.ids_keep.shape == (batch, num_keep)
    assert result.ids_shuffle.dtype == result.ids_keep.dtype == result.ids_restore.dtype == torch.int64
    assert result.mask.dtype == torch.float32
    device = result.mask.device
    positions = torch.arange(num_patches, device=device).expand(batch, -1)
    assert torch.equal(result.ids_shuffle.sort(dim=1).values, positions), "ids_shuffle is not a permutation"
    assert torch.equal(result.ids_keep, result.ids_shuffle[:, :num_keep])
    assert torch.equal(torch.gather(result.ids_shuffle, 1, result.ids_restore), positions)
    assert torch.equal(result.mask.sum(dim=1), torch.full((batch,), float(num_patches - num_keep), device=device))
    assert (torch.gather(result.mask, 1, result.ids_keep) == 0).all(), "a kept patch is marked removed"
    assert torch.equal(result.mask, (result.ids_restore >= num_keep).float())


def rectangle_union(blocks: list[tuple[int, int, int, int]], grid: tuple[int, int]) -> torch.Tensor:
    covered = torch.zeros(grid, dtype=torch.bool)
    for top, left, height, width in blocks:
        assert 0 <= top and top + height <= grid[0] and 0 <= left and left + width <= grid[1], "block off the grid"
        covered[top : top + height, left : left + width] = True
    return covered


@pytest.fixture
def host_only(device: torch.device) -> None:
    """Skip outside the CPU suite: the test exercises host-side code only, which the CPU run covers."""
    if device.type != "cpu":
        pytest.skip("host-side only (CPU generator or meta tensors): the CPU suite covers it")


# ----------------------------------------------------------------------------- block masking


@pytest.mark.parametrize(
    ("batch", "grid", "ratio"),
    [(1, (14, 14), 0.4), (3, (7, 5), 0.6), (2, (4, 4), 0.9375), (2, (6, 6), 0.01), (4, (3, 9), 0.75)],
    ids=str,
)
def test_block_masking_contract_and_rectangles(
    batch: int, grid: tuple[int, int], ratio: float, device: torch.device
) -> None:
    """K = int(L(1-r)) like random masking (K = 1 and K = L-1 included); the removed patches are the union
    of the drawn rectangles minus surplus patches unmasked after the last rectangle."""
    num_patches = grid[0] * grid[1]
    keep = random_masking(1, num_patches, ratio).num_keep
    seed = int(torch.randint(1 << 30, ()))
    result = block_masking(batch, grid, ratio, generator=torch.Generator().manual_seed(seed), device=device)
    check_contract(result, batch, num_patches, keep)
    # the same generator stream, one sample at a time: the per-sample draws block_masking made
    replay = torch.Generator().manual_seed(seed)
    for b in range(batch):
        drawn = sample_block_mask(grid, num_patches - keep, generator=replay)
        assert torch.equal(result.mask[b].cpu(), drawn.mask.flatten().float())
        union = rectangle_union(drawn.blocks, grid)
        assert not (drawn.mask & ~union).any(), "a removed patch lies outside every rectangle"
        assert union.sum() >= num_patches - keep
        # rectangles are drawn only until enough are covered: without the last one, too few were
        assert rectangle_union(drawn.blocks[:-1], grid).sum() < num_patches - keep


def test_block_masking_blocks_are_contiguous_regions(device: torch.device) -> None:
    """With a high min_block the mask is a few big rectangles, not scattered patches (and is not random masking)."""
    grid = (16, 16)
    result = block_masking(8, grid, 0.5, min_block=16, generator=torch.Generator().manual_seed(3), device=device)
    masks = result.mask.view(8, *grid)
    # fraction of removed patches whose right neighbour is removed too: about 0.5 for random masking
    same_right = (masks[:, :, :-1] * masks[:, :, 1:]).sum() / masks[:, :, :-1].sum()
    assert same_right > 0.75, f"block masks look scattered: {same_right:.2f}"


@pytest.mark.usefixtures("host_only")
def test_sample_block_mask_options() -> None:
    generator = torch.Generator().manual_seed(0)
    # a block larger than needed is trimmed back to exactly num_masked
    drawn = sample_block_mask((5, 5), 3, min_block=16, generator=generator)
    assert drawn.mask.sum() == 3 and len(drawn.blocks) == 1
    # max_block caps the area: tall/wide rectangles of at most ~max_block patches
    drawn = sample_block_mask((20, 20), 200, min_block=4, max_block=6, aspect=(1.0, 1.0), generator=generator)
    assert all(h * w <= 9 and abs(h - w) <= 1 for _, _, h, w in drawn.blocks)
    assert drawn.mask.sum() == 200
    # the aspect ratio range is honoured (up to rounding): here only wide blocks
    drawn = sample_block_mask((20, 20), 150, min_block=20, aspect=(0.1, 0.2), generator=generator)
    assert all(w >= 2 * h for _, _, h, w in drawn.blocks)


def test_block_masking_is_deterministic_for_a_generator(device: torch.device) -> None:
    first = block_masking(4, (9, 7), 0.7, generator=torch.Generator().manual_seed(11), device=device)
    second = block_masking(4, (9, 7), 0.7, generator=torch.Generator().manual_seed(11), device=device)
    other = block_masking(4, (9, 7), 0.7, generator=torch.Generator().manual_seed(12), device=device)
    for a, b in zip(first[:4], second[:4]):
        assert torch.equal(a, b)
    assert not torch.equal(first.mask, other.mask)


def test_block_masking_kept_order_is_random(device: torch.device) -> None:
    result = block_masking(4, (10, 10), 0.5, generator=torch.Generator().manual_seed(5), device=device)
    assert not torch.equal(result.ids_keep, result.ids_keep.sort(dim=1).values)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"mask_ratio": 1.0}, ValueError, "mask_ratio"),
        ({"mask_ratio": 0.999}, ValueError, "keeps 0 of"),
        ({"batch": 0}, ValueError, "batch must be a positive int"),
        ({"grid_size": (4, 0)}, ValueError, "grid_size must be positive"),
        ({"grid_size": (4, 4, 4)}, TypeError, "grid_size must be an int or a pair"),
        ({"min_block": 0}, ValueError, "min_block"),
        ({"max_block": 2}, ValueError, "max_block"),
        ({"aspect": (2.0, 1.0)}, ValueError, "aspect"),
        ({"aspect": 0.3}, TypeError, "aspect"),
        ({"generator": 7}, TypeError, "generator must be a torch.Generator"),
    ],
    ids=lambda v: str(v)[:24],
)
def test_block_masking_bad_input(kwargs: dict, error: type, message: str) -> None:
    args = {"batch": 2, "grid_size": (4, 4), "mask_ratio": 0.5, **kwargs}
    with pytest.raises(error, match=message):
        block_masking(args.pop("batch"), args.pop("grid_size"), args.pop("mask_ratio"), **args)


# ----------------------------------------------------------------------------- grid masking


@pytest.mark.parametrize(("grid", "stride"), [((4, 6), 2), ((7, 5), 2), ((6, 6), (3, 2)), ((2, 3), (1, 2))], ids=str)
def test_grid_masking_fixed_pattern(grid: tuple[int, int], stride, device: torch.device) -> None:  # type: ignore[no-untyped-def]
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    result = grid_masking(3, grid, stride=stride, device=device)
    keep = -(-grid[0] // sh) * -(-grid[1] // sw)
    check_contract(result, 3, grid[0] * grid[1], keep)
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], device=device), torch.arange(grid[1], device=device), indexing="ij"
    )
    expected_removed = ~((rows % sh == 0) & (cols % sw == 0))
    assert torch.equal(result.mask.view(3, *grid), expected_removed.float().expand(3, -1, -1))
    # kept patches in row-major order: a regular sub-grid
    assert torch.equal(result.ids_keep, result.ids_keep.sort(dim=1).values)
    removed = result.ids_shuffle[:, keep:]
    assert torch.equal(removed, removed.sort(dim=1).values)


def test_grid_masking_random_offset(device: torch.device) -> None:
    grid, batch = (6, 8), 64
    generator = torch.Generator(device=device).manual_seed(1)  # the offsets are drawn on device
    result = grid_masking(batch, grid, stride=2, random_offset=True, generator=generator, device=device)
    check_contract(result, batch, 48, 12)
    kept = (result.mask.view(batch, *grid) == 0).nonzero()
    offsets = set()
    for b in range(batch):
        rows, cols = kept[kept[:, 0] == b, 1], kept[kept[:, 0] == b, 2]
        offset = (int(rows[0]) % 2, int(cols[0]) % 2)
        assert ((rows % 2 == offset[0]) & (cols % 2 == offset[1])).all(), "kept patches are not one shifted lattice"
        offsets.add(offset)
    assert offsets == {(0, 0), (0, 1), (1, 0), (1, 1)}  # 64 samples: every offset occurs
    generator = torch.Generator(device=device).manual_seed(1)
    again = grid_masking(batch, grid, stride=2, random_offset=True, generator=generator, device=device)
    assert torch.equal(again.mask, result.mask)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"stride": 1}, ValueError, "keeps every patch"),
        ({"grid_size": (1, 3), "stride": (2, 1)}, ValueError, "keeps every patch"),
        ({"grid_size": (5, 4), "random_offset": True}, ValueError, "multiple of stride"),
        ({"stride": 0}, ValueError, "stride must be positive"),
        ({"batch": -1}, ValueError, "batch"),
    ],
    ids=lambda v: str(v)[:24],
)
def test_grid_masking_bad_input(kwargs: dict, error: type, message: str) -> None:
    args = {"batch": 2, "grid_size": (4, 4), **kwargs}
    with pytest.raises(error, match=message):
        grid_masking(args.pop("batch"), args.pop("grid_size"), **args)


# ----------------------------------------------------------------------------- tube and space-time masking


@pytest.mark.parametrize(("batch", "grid", "ratio"), [(1, (2, 3, 3), 0.5), (3, (4, 7, 5), 0.9), (2, (1, 2, 2), 0.25)])
def test_tube_masking_same_mask_every_slice(
    batch: int, grid: tuple[int, int, int], ratio: float, device: torch.device
) -> None:
    frames, gh, gw = grid
    spatial_keep = int(gh * gw * (1 - ratio))
    result = tube_masking(batch, grid, ratio, generator=torch.Generator(device=device).manual_seed(2), device=device)
    check_contract(result, batch, frames * gh * gw, frames * spatial_keep)
    slices = result.mask.view(batch, frames, gh * gw)
    assert torch.equal(slices, slices[:, :1].expand(-1, frames, -1)), "the spatial mask changes over time"
    # kept tubelets: slice by slice, each slice's spatial ids the same and in the same order
    kept = result.ids_keep.view(batch, frames, spatial_keep)
    spatial = kept % (gh * gw)
    assert torch.equal(kept // (gh * gw), torch.arange(frames, device=device).view(1, frames, 1).expand_as(kept))
    assert torch.equal(spatial, spatial[:, :1].expand_as(spatial))


def test_tube_masking_uses_random_masking_on_the_plane(device: torch.device) -> None:
    noise = torch.rand(2, 12, device=device)
    tube = tube_masking(2, (3, 3, 4), 0.75, noise=noise)
    plane = random_masking(2, 12, 0.75, noise=noise)
    assert torch.equal(tube.mask, plane.mask.repeat(1, 3))
    assert torch.equal(tube.ids_keep[:, : plane.num_keep], plane.ids_keep)


def test_random_masking_over_space_time(device: torch.device) -> None:
    """Space-time random masking is random_masking over L = T' * gh * gw tubelets; slices then differ."""
    frames, gh, gw = 4, 4, 4
    generator = torch.Generator(device=device).manual_seed(0)
    result = random_masking(3, frames * gh * gw, 0.9, generator=generator, device=device)
    check_contract(result, 3, 64, 6)
    slices = result.mask.view(3, frames, gh * gw)
    assert not torch.equal(slices, slices[:, :1].expand(-1, frames, -1))


def test_tube_masking_is_deterministic(device: torch.device) -> None:
    first = tube_masking(3, (2, 4, 4), 0.75, generator=torch.Generator(device=device).manual_seed(9), device=device)
    second = tube_masking(3, (2, 4, 4), 0.75, generator=torch.Generator(device=device).manual_seed(9), device=device)
    assert torch.equal(first.ids_shuffle, second.ids_shuffle)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"grid_size": (4, 4)}, TypeError, "grid_size must be a"),
        ({"grid_size": (2, 0, 4)}, ValueError, "grid_size must be positive"),
        ({"mask_ratio": 0.0}, ValueError, "mask_ratio"),
        ({"noise": torch.rand(2, 32)}, ValueError, "noise must have shape"),
    ],
    ids=lambda v: str(v)[:24],
)
def test_tube_masking_bad_input(kwargs: dict, error: type, message: str) -> None:
    args = {"batch": 2, "grid_size": (2, 4, 4), "mask_ratio": 0.5, **kwargs}
    with pytest.raises(error, match=message):
        tube_masking(args.pop("batch"), args.pop("grid_size"), args.pop("mask_ratio"), **args)


@pytest.mark.usefixtures("host_only")
def test_generators_place_results_on_device() -> None:
    for result in (
        block_masking(2, (4, 4), 0.5, device="meta"),
        grid_masking(2, (4, 4), device="meta"),
    ):
        assert all(t.device.type == "meta" for t in result[:4])


def test_vectorised_generators_compile_fullgraph(device: torch.device) -> None:
    """tube_masking (with its noise given) and grid_masking trace with no graph break and match eager."""

    def draw(noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tube = tube_masking(2, (2, 3, 4), 0.75, noise=noise)
        grid = grid_masking(2, (4, 6), stride=(2, 3), device=device)
        return (*tube[:4], *grid[:4])

    torch._dynamo.reset()
    compiled = torch.compile(draw, fullgraph=True, backend="aot_eager")
    noise = torch.rand(2, 12, device=device)
    for got, expected in zip(compiled(noise), draw(noise)):
        assert torch.equal(got, expected)
