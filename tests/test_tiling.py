"""Tiling: exact round trips, weights that sum to 1, bounded waste, no seams with local models."""

from __future__ import annotations

import numpy as np
import pytest

from enhancer import tiling
from enhancer.tiling import (
    MAX_WASTE_RATIO,
    bucket_shapes,
    bucket_sizes,
    enhance_tiled,
    plan_axis,
    plan_tiles,
    run_in_batches,
    split,
    stitch,
)
from enhancer.samples import from_unit_float

TILE, OVERLAP = 576, 32  # the server's CPU defaults
MULTIPLE = 4  # the shipped model's size multiple (its spec); other multiples are swept below


def identity(batch: np.ndarray) -> np.ndarray:
    return batch.copy()


def box_blur(batch: np.ndarray) -> np.ndarray:
    """3x3 mean with zero padding at the array edge: a 'model' with a reach of 1 px."""
    padded = np.pad(batch, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = batch.shape[1:3]
    return sum(padded[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9.0


def random_image(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, c), dtype=np.float32)


@pytest.mark.parametrize(
    ("h", "w", "tile"),
    [(1, 1, TILE), (1, 517, TILE), (517, 1, TILE), (7, 7, TILE), (255, 257, TILE), (1024, 768, TILE), (1500, 1100, 256)],
)
def test_identity_model_round_trips_exactly(h, w, tile):
    image = random_image(h, w)
    out = enhance_tiled(image, identity, tile, OVERLAP, batch_size=4, multiple=MULTIPLE)
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, image, rtol=0, atol=1e-6)


def test_large_image_uses_several_tiles_of_one_shape():
    plan = plan_tiles(1500, 1100, 256, OVERLAP, multiple=MULTIPLE)
    assert plan.grid[0] >= 3 and plan.grid[1] >= 3
    tiles = split(random_image(1500, 1100), plan)
    assert tiles.shape == (plan.num_tiles, *plan.tile_shape, 3)


def test_single_channel_and_integer_samples_are_accepted():
    gray = random_image(40, 90, c=1)
    np.testing.assert_allclose(enhance_tiled(gray, identity, 64, 16, 2, multiple=MULTIPLE), gray, atol=1e-6)
    for dtype, top in ((np.uint8, 255), (np.uint16, 65535)):  # full-range samples, as decoded
        samples = (random_image(30, 30) * top).astype(dtype)
        out = enhance_tiled(samples, identity, TILE, OVERLAP, 1, multiple=MULTIPLE)
        np.testing.assert_allclose(out, samples / np.float32(top), rtol=0, atol=1e-6)


def test_tiles_keep_the_images_sample_type_and_the_model_sees_float32():
    """Tiles of an 8-bit image cost a byte a sample; only a batch at a time becomes float32."""
    image = (random_image(300, 200) * 255).astype(np.uint8)
    plan = plan_tiles(300, 200, 128, OVERLAP, multiple=MULTIPLE)
    tiles = split(image, plan)
    assert tiles.dtype == np.uint8
    seen = []

    def model(batch):
        seen.append((batch.dtype, len(batch), float(batch.max())))
        return batch

    outputs = run_in_batches(tiles, model, 2, output_dtype=np.uint16)
    assert outputs.dtype == np.uint16 and tiles.dtype == np.uint8  # nothing written over the bytes
    assert all(dtype == np.float32 and n <= 2 and top <= 1.0 for dtype, n, top in seen)
    # 8-bit values are exact in 16 bits (65535 = 255 x 257), so the round trip loses nothing
    np.testing.assert_array_equal(stitch(outputs, plan, dtype=np.uint8), image)


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.uint16])
def test_stitching_in_bands_equals_blending_the_whole_image_at_once(dtype):
    """The banded stitch gives what one whole-image float accumulation gives, rounded once."""
    rng = np.random.default_rng(5)
    plan = plan_tiles(700, 333, 128, OVERLAP, multiple=MULTIPLE)
    tiles = rng.uniform(-0.1, 1.1, size=(plan.num_tiles, *plan.tile_shape, 3)).astype(np.float32)
    whole = np.zeros((700, 333, 3), np.float32)
    k = 0
    for y, wy in zip(plan.rows.starts, plan.rows.windows()):
        for x, wx in zip(plan.cols.starts, plan.cols.windows()):
            padded = np.zeros((plan.rows.length, plan.cols.length, 3), np.float32)
            padded[y : y + plan.rows.tile, x : x + plan.cols.tile] = tiles[k] * np.outer(wy, wx).astype(np.float32)[..., None]
            whole += padded[plan.rows.pad_before : plan.rows.pad_before + 700, plan.cols.pad_before : plan.cols.pad_before + 333]
            k += 1
    expected = from_unit_float(whole, dtype)
    got = stitch(tiles, plan, dtype=dtype)
    assert got.dtype == dtype
    if dtype == np.float32:
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    else:  # one rounding step at most where float sums in another order land on a boundary
        assert np.abs(got.astype(np.int64) - expected.astype(np.int64)).max() <= 1


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_16_bit_tiles_blend_like_their_float_values(scale):
    """The server stitches the model's 16-bit outputs: summed as samples, scaled once per band row,
    the inside of each tile added without its (unit) weight, they give what their float values give."""
    rng = np.random.default_rng(6)
    plan = plan_tiles(300, 410, 128, OVERLAP, multiple=MULTIPLE)
    shape = (plan.num_tiles, plan.rows.tile * scale, plan.cols.tile * scale, 3)
    samples = rng.integers(0, 65536, size=shape, dtype=np.uint16)
    as_float = stitch(samples.astype(np.float32) / np.float32(65535), plan, scale=scale)
    np.testing.assert_allclose(stitch(samples, plan, scale=scale), as_float, rtol=0, atol=1e-6)
    eight = stitch(samples, plan, scale=scale, dtype=np.uint8)
    assert np.abs(eight.astype(np.int64) - from_unit_float(as_float, np.uint8).astype(np.int64)).max() <= 1


@pytest.mark.parametrize("scale", [1, 2])
def test_the_strip_height_does_not_change_the_stitched_image(monkeypatch, scale):
    """Strips of 1, 5 or 64 rows, or one strip per tile row, give the same bits: every pixel sums
    the same terms in the same order, and no float copy taller than a strip is needed."""
    from enhancer import tiling

    rng = np.random.default_rng(8)
    plan = plan_tiles(530, 270, 128, OVERLAP, multiple=MULTIPLE)
    assert plan.grid[0] > 3  # several tile rows, so rows are carried from one to the next
    shape = (plan.num_tiles, plan.rows.tile * scale, plan.cols.tile * scale, 3)
    samples = rng.integers(0, 65536, size=shape, dtype=np.uint16)
    whole_rows = stitch(samples, plan, scale=scale)  # the default strip holds a tile row here
    width = 270 * scale * 3
    for rows_per_strip in (1, 5, 64):
        monkeypatch.setattr(tiling, "STRIP_VALUES", rows_per_strip * width)
        np.testing.assert_array_equal(stitch(samples, plan, scale=scale), whole_rows)
        np.testing.assert_array_equal(stitch(samples, plan, scale=scale, dtype=np.uint8), from_unit_float(whole_rows, np.uint8))


@pytest.mark.parametrize("size", [1, 2, 7, 64, 300, 517, 1100, 4000])
def test_axis_windows_sum_to_one_over_the_whole_padded_axis(size):
    axis = plan_axis(size, 256, OVERLAP, multiple=MULTIPLE)
    total = np.zeros(axis.length)
    for start, window in zip(axis.starts, axis.windows()):
        assert window.shape == (axis.tile,) and (window >= 0).all()
        total[start : start + axis.tile] += window
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-12)


def test_stitched_weights_sum_to_one_in_2d():
    plan = plan_tiles(700, 900, 128, OVERLAP, multiple=MULTIPLE)
    ones = np.ones((plan.num_tiles, *plan.tile_shape, 1), dtype=np.float32)
    np.testing.assert_allclose(stitch(ones, plan)[..., 0], 1.0, rtol=0, atol=1e-6)


def test_weight_is_one_where_a_tile_is_alone_and_zero_at_tile_edges_inside_the_image():
    axis = plan_axis(1000, 256, OVERLAP, multiple=MULTIPLE)
    windows = axis.windows()
    assert axis.count >= 3
    first, middle = windows[0], windows[1]
    assert first[0] == 1.0 and middle[axis.tile // 2] == 1.0
    # The guard: a tile contributes nothing next to an edge it shares with a neighbour.
    guard = OVERLAP // tiling.GUARD_DIVISOR
    assert (middle[:guard] == 0).all() and (middle[-guard:] == 0).all()


def test_overlap_cross_fade_is_smooth_not_a_seam():
    """A model that adds a different constant per tile must fade, not jump, between tiles."""
    plan = plan_tiles(600, 600, 256, OVERLAP, multiple=MULTIPLE)
    offsets = np.arange(plan.num_tiles, dtype=np.float32)
    tiles = split(np.zeros((600, 600, 1), np.float32), plan) + offsets[:, None, None, None]
    out = stitch(tiles, plan)[..., 0]
    # Neighbouring tiles differ by up to `cols.count` (the tile below); a seam would jump that much
    # in one pixel. The raised-cosine fade spreads it over ~OVERLAP/2 px: max slope pi/2 per width.
    largest_step = float(plan.grid[1])
    ramp = OVERLAP - 2 * (OVERLAP // tiling.GUARD_DIVISOR)
    max_allowed = largest_step * np.pi / 2 / ramp * 1.01
    assert np.abs(np.diff(out, axis=0)).max() <= max_allowed
    assert np.abs(np.diff(out, axis=1)).max() <= max_allowed
    assert out.min() == 0 and out.max() == plan.num_tiles - 1  # every tile still owns its middle


def test_local_model_tiled_equals_untiled():
    """With a 1 px reach model, blending guarded overlaps reproduces the whole-image result."""
    image = random_image(300, 430)
    tiled = enhance_tiled(image, box_blur, 64, 16, batch_size=8, multiple=MULTIPLE)
    plan = plan_tiles(300, 430, 64, 16, multiple=MULTIPLE)
    assert plan.num_tiles > 20
    # Untiled reference: the whole image mirrored at its borders, blurred once, cropped back.
    pad = 8
    whole = box_blur(np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")[None])[0]
    np.testing.assert_allclose(tiled, whole[pad:-pad, pad:-pad], rtol=0, atol=1e-5)


def test_tiles_are_aligned_to_the_model_size_multiple():
    """A model whose output depends on position mod 4 inside the tile (like space-to-depth) must
    see every tile in the same phase, so its pattern survives stitching unbroken."""

    def phase_pattern(batch):
        h, w = batch.shape[1:3]
        yy, xx = np.mgrid[0:h, 0:w]
        return batch + ((yy % 4) * 4 + (xx % 4)).astype(np.float32)[None, :, :, None]

    plan = plan_tiles(333, 517, 128, OVERLAP, multiple=MULTIPLE)
    assert plan.num_tiles > 4
    added = enhance_tiled(np.zeros((333, 517, 1), np.float32), phase_pattern, 128, OVERLAP, 4, multiple=MULTIPLE)[..., 0]
    assert np.abs(added[4:, :] - added[:-4, :]).max() < 1e-4
    assert np.abs(added[:, 4:] - added[:, :-4]).max() < 1e-4
    for axis in (plan.rows, plan.cols):
        assert axis.pad_before % MULTIPLE == 0
        assert all(s % MULTIPLE == 0 for s in axis.starts)


def test_border_padding_mirrors_the_image():
    image = random_image(100, 120)
    plan = plan_tiles(100, 120, TILE, OVERLAP, multiple=MULTIPLE)
    (tile,) = split(image, plan)
    top, left = plan.rows.pad_before, plan.cols.pad_before
    expected = np.pad(image, ((top, plan.rows.pad_after), (left, plan.cols.pad_after), (0, 0)), mode="reflect")
    assert np.array_equal(tile, expected)
    assert top >= 12 and left >= 12  # at least side/8 of context on every border


@pytest.mark.parametrize(("h", "w"), [(1, 1), (1, 5), (2, 3), (5, 1)])
def test_one_and_two_pixel_sides_pad_without_error(h, w):
    image = random_image(h, w)
    plan = plan_tiles(h, w, TILE, OVERLAP, multiple=MULTIPLE)
    (tile,) = split(image, plan)
    assert tile.shape == (64, 64, 3)
    # Every padded pixel is a copy of some image pixel (edge or mirror), never zero or garbage.
    flat = {tuple(p) for p in image.reshape(-1, 3)}
    assert all(tuple(p) in flat for p in tile.reshape(-1, 3))
    if h == 1:
        assert np.array_equal(tile[:, plan.cols.pad_before : plan.cols.pad_before + w], np.broadcast_to(image, (64, w, 3)))


def test_full_margin_of_context_for_large_images():
    plan = plan_tiles(2000, 3000, TILE, OVERLAP, multiple=MULTIPLE)
    for axis in (plan.rows, plan.cols):
        assert axis.pad_before >= OVERLAP and axis.pad_after >= OVERLAP


@pytest.mark.parametrize("tile", [128, 256, 512, 1024])
def test_tile_shapes_come_from_the_ladder(tile):
    shapes = set(bucket_shapes(tile, MULTIPLE))
    sizes = bucket_sizes(tile, MULTIPLE)
    assert sizes[-1] == tile and all(s % MULTIPLE == 0 for s in sizes)
    assert len(sizes) <= 11  # short: the model runner warms up every shape
    seen = set()
    for h in (1, 7, 63, 64, 100, 300, tile - 1, tile, tile + 1, 2 * tile + 5, 3000):
        for w in (1, 90, 517, 2500):
            seen.add(plan_tiles(h, w, tile, OVERLAP, multiple=MULTIPLE).tile_shape)
    assert seen <= shapes
    assert len(seen) > 4


def test_small_images_get_small_tiles():
    assert plan_tiles(90, 80, TILE, OVERLAP, multiple=MULTIPLE).tile_shape == (148, 112)  # ladder 64, 84, 112, 148, ...
    assert plan_tiles(7, 7, TILE, OVERLAP, multiple=MULTIPLE).tile_shape == (64, 64)
    assert plan_tiles(200, 1000, TILE, OVERLAP, multiple=MULTIPLE).num_tiles == 2


def test_padding_waste_is_bounded():
    """Tile pixels run <= MAX_WASTE_RATIO x image pixels for every image with both sides >= 64."""
    sides = range(64, 3000)
    ratio = {s: plan_axis(s, TILE, OVERLAP, multiple=MULTIPLE).tile * plan_axis(s, TILE, OVERLAP, multiple=MULTIPLE).count / s for s in sides}
    worst = max(ratio.values())
    # Axes are planned independently, so the worst image is the worst side squared.
    assert worst**2 <= MAX_WASTE_RATIO
    h = max(ratio, key=ratio.get)
    assert plan_tiles(h, h, TILE, OVERLAP, multiple=MULTIPLE).waste_ratio == pytest.approx(worst**2)
    assert plan_tiles(3000, 4000, TILE, OVERLAP, multiple=MULTIPLE).waste_ratio < 1.5


def test_every_tile_is_used_and_overlaps_cover_the_requested_width():
    for size in (600, 1000, 4096):
        axis = plan_axis(size, 256, OVERLAP, multiple=MULTIPLE)
        assert axis.length == axis.starts[-1] + axis.tile
        gaps = np.diff(axis.starts)
        assert (axis.tile - gaps >= OVERLAP).all()  # every overlap at least as wide as asked
        assert axis.pad_before < axis.tile and axis.pad_after < axis.tile


@pytest.mark.parametrize(("tile", "overlap"), [(510, 32), (8, 0), (512, 300), (512, -1)])
def test_bad_settings_are_rejected(tile, overlap):
    with pytest.raises(ValueError):
        plan_tiles(100, 100, tile, overlap, multiple=MULTIPLE)


def test_forward_returning_wrong_shape_is_reported():
    with pytest.raises(ValueError, match="forward returned shape"):
        enhance_tiled(random_image(50, 50), lambda b: b[:, :10], TILE, OVERLAP, 1, multiple=MULTIPLE)


def test_stitch_checks_the_tiles_match_the_plan():
    plan = plan_tiles(300, 300, 128, OVERLAP, multiple=MULTIPLE)
    with pytest.raises(ValueError, match="tiles"):
        stitch(np.zeros((plan.num_tiles - 1, *plan.tile_shape, 3), np.float32), plan)
    with pytest.raises(ValueError, match="does not match"):
        split(random_image(301, 300), plan)


def test_progress_reports_every_tile():
    done = []
    plan = plan_tiles(700, 700, 256, OVERLAP, multiple=MULTIPLE)
    enhance_tiled(random_image(700, 700), identity, 256, OVERLAP, 3, progress=done.append, multiple=MULTIPLE)
    assert sum(done) == plan.num_tiles and max(done) == 3


# --- the model's size multiple and scale come from its spec --------------------------------------


@pytest.mark.parametrize("multiple", [4, 8, 16])
def test_tile_origins_in_image_coordinates_are_multiples_of_the_size_multiple(multiple):
    """So a model that needs the JPEG 8x8 / 16x16 grid phase sees it in every tile."""
    for tile in (128, 576, 1024):
        for size in [*range(1, 70), *range(70, 3000, 37), 4096, 5001]:
            axis = plan_axis(size, tile, OVERLAP, multiple=multiple)
            assert axis.tile % multiple == 0 and axis.tile in bucket_sizes(tile, multiple)
            assert all((start - axis.pad_before) % multiple == 0 for start in axis.starts), (tile, size)
            assert axis.pad_before >= min(OVERLAP, size // tiling.MARGIN_DIVISOR)  # the context margin
            assert axis.starts[0] <= axis.pad_before and axis.pad_before + size <= axis.length  # covered
            assert (axis.tile - np.diff(axis.starts) >= OVERLAP).all()  # every overlap as wide as asked


@pytest.mark.parametrize("multiple", [4, 8, 16])
def test_a_position_dependent_model_sees_every_tile_in_the_image_s_phase(multiple):
    """A model whose output depends on the position mod `multiple` inside its input (as a JPEG
    block-grid model does) gives, tiled, exactly what it gives on the whole image."""

    def phase(h: int, w: int) -> np.ndarray:
        yy, xx = np.mgrid[0:h, 0:w]
        return ((yy % multiple) * multiple + (xx % multiple)).astype(np.float32)

    def phase_model(batch):
        return batch + phase(*batch.shape[1:3])[None, :, :, None]

    plan = plan_tiles(333, 517, 128, OVERLAP, multiple=multiple)
    assert plan.num_tiles > 4
    added = enhance_tiled(np.zeros((333, 517, 1), np.float32), phase_model, 128, OVERLAP, 4, multiple=multiple)
    np.testing.assert_allclose(added[..., 0], phase(333, 517), rtol=0, atol=1e-4)


def test_tile_size_must_be_a_multiple_of_the_model_s_multiple():
    with pytest.raises(ValueError, match="multiple of 16"):
        plan_tiles(100, 100, 200, OVERLAP, multiple=16)
    with pytest.raises(ValueError, match="multiple of 16"):
        bucket_sizes(200, 16)


def nearest_2x(batch: np.ndarray) -> np.ndarray:
    """A fake 2x super-resolution model: every pixel becomes a 2x2 block."""
    return np.repeat(np.repeat(batch, 2, axis=1), 2, axis=2)


@pytest.mark.parametrize(("h", "w"), [(1, 1), (37, 300), (300, 430), (700, 900)])
def test_a_2x_model_tiled_equals_untiled(h, w):
    image = random_image(h, w)
    tiled = enhance_tiled(image, nearest_2x, 128, OVERLAP, batch_size=4, multiple=MULTIPLE, scale=2)
    assert tiled.shape == (2 * h, 2 * w, 3)
    np.testing.assert_allclose(tiled, nearest_2x(image[None])[0], rtol=0, atol=1e-6)


def test_a_2x_model_with_reach_blends_at_output_resolution():
    """Blur (1 px reach) then 2x: the guarded, cross-faded overlaps reproduce the whole-image run."""
    image = random_image(300, 430)
    tiled = enhance_tiled(image, lambda b: nearest_2x(box_blur(b)), 64, 16, batch_size=8, multiple=MULTIPLE, scale=2)
    assert plan_tiles(300, 430, 64, 16, multiple=MULTIPLE).num_tiles > 20
    pad = 8
    whole = nearest_2x(box_blur(np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")[None]))[0]
    np.testing.assert_allclose(tiled, whole[2 * pad : -2 * pad, 2 * pad : -2 * pad], rtol=0, atol=1e-5)


def test_scaled_weights_sum_to_one_and_stitch_checks_the_scale():
    plan = plan_tiles(300, 500, 128, OVERLAP, multiple=MULTIPLE)
    ones = np.ones((plan.num_tiles, 3 * plan.tile_shape[0], 3 * plan.tile_shape[1], 1), np.float32)
    np.testing.assert_allclose(stitch(ones, plan, scale=3)[..., 0], np.ones((900, 1500)), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="tiles of"):
        stitch(ones, plan, scale=2)
    with pytest.raises(ValueError, match=r"forward returned shape .* \(expected"):
        enhance_tiled(random_image(50, 50), identity, 128, OVERLAP, 1, multiple=MULTIPLE, scale=2)
