"""Split an image into overlapping model tiles and blend the results back: pure numpy.

Why tiles at all: memory and latency grow with the tile, not the photo, and tiles of one shape
from many requests can share a batch. Everything here is decided per axis, so a plan is two
independent `AxisPlan`s and a tile is `rows.tile x cols.tile`. Plans are in input pixels; a
model that enlarges (spec `scale` > 1) returns tiles `scale` times larger, and `stitch` blends them
at output resolution.

How an axis is planned (`plan_axis`):

* Context margin. Every image border gets at least `context` pixels of mirrored image ("reflect"
  padding; "edge" for a 1 px side), rounded up to the size multiple and at most ~1/8 of the side,
  so border pixels see image-like context instead of the net's own zero padding. Unset, it is the
  overlap (which the caller keeps at or above the net's reach). The server passes its
  `border_context` setting, 0 by default: what context buys at the border and what it costs are
  measured in benchmarks/RESULTS.md ("Border context"). Whatever is still padded (rounding up to
  a segment) is mirrored too.
* Segment lengths. The padded side is covered by segments of one length: one segment of the
  smallest allowed length that fits when the side fits in a tile, otherwise the fewest segments a
  full tile would need, each of the smallest allowed length with which that many still overlap by
  `overlap`. With `buckets` the allowed lengths are a short geometric ladder (`bucket_sizes`), so
  tiles of different images share a shape (and a batch) and the model runner can warm every shape
  up front (`bucket_shapes`); without, any multiple of the size multiple up to the tile size, so
  a 512x512 image runs as 512x512 rather than the next bucket, 576x576 (for a model that needs no
  warm-up per shape and runs one tile at a time, as TensorFlow on a CPU at batch 1).
* Alignment. Tile sides, tile origins and margins are multiples of the model's `size_multiple`
  (from its spec; e.g. 4 for a net working at 1/2 and 1/4 resolution by space-to-depth): such a
  net is only shift-equivariant in those steps, so aligned tiles see the image in the same phase as
  an untiled run and agree with it. Origins in image coordinates (segment start minus the mirrored
  pad) are multiples too, so a model that needs the JPEG 8x8/16x16 grid phase keeps it.
* Blending. Neighbouring segments overlap by at least `overlap`. Inside each overlap the outer
  quarter on each side (`guard`) is given wholly to the tile that is *not* near its own edge, and
  the middle half is a raised-cosine cross-fade. The guard keeps the pixels a tile computed next to
  its (zero-padded) edge out of the result; the cross-fade hides whatever difference remains.
  Windows are normalised explicitly so all weights sum to 1 at every pixel. The guard's gain over
  a cross-fade across the whole overlap is in benchmarks/RESULTS.md ("Figures that were in code
  comments"); tests/test_tiled_inference.py bounds the difference from an untiled run.

Padding waste (tile pixels run / image pixels) with buckets, tile 576 and overlap 32 as context is at
most 2.8 for any image whose sides are both >= 64 px, i.e. the padding is at most 1.8x the image's
own pixels; for sides >= 512 it is at most 2.4 and for a 4000x3000 photo 1.33. `tests/test_tiling.py`
checks the bound `MAX_WASTE_RATIO` over a sweep of sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from enhancer.samples import from_unit_float, to_unit_float, white_value

#: Smallest bucket: tiny images are padded up to this rather than multiplying warm-up shapes.
MIN_BUCKET = 64
#: Largest ratio between neighbouring buckets; bounds the rounding waste per axis (~1.35x).
LADDER_RATIO = 1.35
#: The context margin is at most side / MARGIN_DIVISOR (rounded up to the size multiple).
MARGIN_DIVISOR = 8
#: Each side of an overlap keeps overlap // GUARD_DIVISOR pixels out of the cross-fade (see module doc).
GUARD_DIVISOR = 4
#: Documented and tested bound on tile pixels / image pixels for sides >= MIN_BUCKET (defaults).
MAX_WASTE_RATIO = 3.0
#: Most float32 values `stitch` blends at a time (16 MiB): a strip of rows, whatever the tile height.
STRIP_VALUES = 1 << 22


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _floor_to(value: int, multiple: int) -> int:
    return value // multiple * multiple


def _check_multiple(tile_size: int, multiple: int) -> None:
    if multiple < 1 or tile_size < multiple or tile_size % multiple:
        raise ValueError(f"tile size must be a positive multiple of {multiple} (the model's size multiple), got {tile_size}")


def _check_settings(tile_size: int, overlap: int, multiple: int) -> None:
    _check_multiple(tile_size, multiple)
    if tile_size < 16:
        raise ValueError(f"tile size must be at least 16, got {tile_size}")
    if not 0 <= overlap <= tile_size // 2:
        raise ValueError(f"tile overlap must be between 0 and half the tile size ({tile_size // 2}), got {overlap}")


def bucket_sizes(tile_size: int, multiple: int) -> list[int]:
    """The segment lengths a plan can use, ascending, ending with `tile_size`; all multiples of
    `multiple` (the model's size multiple).

    A geometric ladder from MIN_BUCKET: short (8 entries for 512) because each pair of sizes is a
    tile shape the model runner warms up, dense enough that rounding up wastes at most ~1.35x.
    """
    _check_multiple(tile_size, multiple)
    if tile_size <= MIN_BUCKET:
        return [tile_size]
    steps = math.ceil(math.log(tile_size / MIN_BUCKET) / math.log(LADDER_RATIO) - 1e-9)
    ratio = (tile_size / MIN_BUCKET) ** (1 / steps)
    sizes = {_ceil_to(round(MIN_BUCKET * ratio**i), multiple) for i in range(steps)}
    sizes.add(tile_size)
    return sorted(sizes)


def bucket_shapes(tile_size: int, multiple: int) -> list[tuple[int, int]]:
    """Every (height, width) tile shape `plan_tiles` can produce for this tile size and multiple."""
    sizes = bucket_sizes(tile_size, multiple)
    return [(h, w) for h in sizes for w in sizes]


@dataclass(frozen=True)
class AxisPlan:
    """How one image axis is padded and cut into equal, overlapping segments."""

    size: int  #: image side in pixels
    tile: int  #: segment length (a bucket size)
    starts: tuple[int, ...]  #: segment origins in padded coordinates (padded axis starts at 0)
    pad_before: int  #: mirrored pixels before the image (image pixel 0 is at padded pad_before)
    overlap: int  #: the requested overlap; sets the blend guard and ramp widths

    @property
    def count(self) -> int:
        return len(self.starts)

    @property
    def length(self) -> int:
        """Padded length: the segments cover [0, length) exactly."""
        return self.starts[-1] + self.tile

    @property
    def pad_after(self) -> int:
        return self.length - self.pad_before - self.size

    def scaled(self, scale: int) -> AxisPlan:
        """The same plan in the pixels of a model output `scale` times larger (for blending)."""
        if scale == 1:
            return self
        return AxisPlan(
            size=self.size * scale,
            tile=self.tile * scale,
            starts=tuple(start * scale for start in self.starts),
            pad_before=self.pad_before * scale,
            overlap=self.overlap * scale,
        )

    def source_index(self) -> np.ndarray:
        """For each padded position, the image index it copies (mirror without repeating the edge).

        Works for any pad length (reflects repeatedly, like np.pad 'reflect') and for a 1 px side,
        where it degenerates to repeating the edge pixel.
        """
        pos = np.arange(self.length) - self.pad_before
        if self.size == 1:
            return np.zeros(self.length, dtype=np.intp)
        period = 2 * (self.size - 1)
        pos = np.mod(pos, period)
        return np.where(pos < self.size, pos, period - pos).astype(np.intp)

    def windows(self) -> list[np.ndarray]:
        """Per-segment blend weights (length `tile` each) that sum to exactly 1 along the axis."""
        guard = self.overlap // GUARD_DIVISOR
        raw = []
        for i, start in enumerate(self.starts):
            weight = np.ones(self.tile, dtype=np.float64)
            if i > 0:  # fade in over the overlap with the previous segment
                weight *= self._ramp(self.starts[i - 1] + self.tile - start, guard, rising=True)
            if i < self.count - 1:  # fade out over the overlap with the next segment
                overlap = start + self.tile - self.starts[i + 1]
                weight *= self._ramp(overlap, guard, rising=False)
            raw.append(weight)
        total = np.zeros(self.length, dtype=np.float64)
        for start, weight in zip(self.starts, raw):
            total[start : start + self.tile] += weight
        return [weight / total[start : start + self.tile] for start, weight in zip(self.starts, raw)]

    def _ramp(self, overlap: int, guard: int, *, rising: bool) -> np.ndarray:
        """A length-`tile` factor: 0 / raised cosine / 1 across an overlap at one end of the tile.

        The cross-fade (width overlap - 2*guard of the *requested* overlap) sits in the middle of
        the actual overlap, which can be a little wider than requested.
        """
        width = max(0, min(self.overlap - 2 * guard, overlap))
        lead = (overlap - width) // 2  # pixels of the overlap before the cross-fade
        t = (np.arange(width) + 0.5) / max(width, 1)
        fade_in = np.sin(0.5 * np.pi * t) ** 2
        factor = np.ones(self.tile, dtype=np.float64)
        if rising:  # overlap occupies the tile's first `overlap` pixels
            factor[:lead] = 0.0
            factor[lead : lead + width] = fade_in
        else:  # overlap occupies the tile's last `overlap` pixels
            begin = self.tile - overlap
            factor[begin + lead : begin + lead + width] = 1.0 - fade_in
            factor[begin + lead + width :] = 0.0
        return factor


def segment_lengths(tile_size: int, multiple: int, *, buckets: bool = True) -> list[int]:
    """The segment lengths a plan may use, ascending: the bucket ladder, or with `buckets` off
    every multiple of `multiple` up to `tile_size`."""
    if buckets:
        return bucket_sizes(tile_size, multiple)
    _check_multiple(tile_size, multiple)
    return list(range(multiple, tile_size + 1, multiple))


def plan_axis(
    size: int, tile_size: int, overlap: int, *, multiple: int, context: int | None = None, buckets: bool = True
) -> AxisPlan:
    """Plan one axis: context margin, segment length, number and origins of segments (see module
    doc). `context`: mirrored pixels wanted beyond each end (None: `overlap`)."""
    _check_settings(tile_size, overlap, multiple)
    if size < 1:
        raise ValueError(f"image side must be at least 1 pixel, got {size}")
    if context is not None and context < 0:
        raise ValueError(f"border context must be at least 0 pixels, got {context}")
    wanted = overlap if context is None else context
    margin = min(_ceil_to(wanted, multiple), _ceil_to(size // MARGIN_DIVISOR, multiple))
    need = size + 2 * margin
    ladder = segment_lengths(tile_size, multiple, buckets=buckets)
    if need <= tile_size:
        tile = next(b for b in ladder if b >= need)
        starts: tuple[int, ...] = (0,)
    else:
        full_step = _floor_to(tile_size - overlap, multiple)
        count = 1 + -(-(need - tile_size) // full_step)  # fewest segments of a full tile
        # The smallest bucket with which that many segments, stepping by at most (bucket -
        # overlap) rounded down to an aligned step, still reach `need`.
        tile = next(b for b in ladder if b > overlap and (count - 1) * _floor_to(b - overlap, multiple) + b >= need)
        # The smallest aligned step that still covers `need`: spare length widens every overlap
        # (more shared context) instead of piling up as padding at the end.
        step = _ceil_to(-(-(need - tile) // (count - 1)), multiple)
        starts = tuple(i * step for i in range(count))
    length = starts[-1] + tile
    pad_before = _floor_to((length - size) // 2, multiple)  # >= margin because length >= size + 2*margin
    return AxisPlan(size=size, tile=tile, starts=starts, pad_before=pad_before, overlap=overlap)


@dataclass(frozen=True)
class TilePlan:
    """Everything needed to split one image into tiles and stitch the results back."""

    rows: AxisPlan
    cols: AxisPlan

    @property
    def height(self) -> int:
        return self.rows.size

    @property
    def width(self) -> int:
        return self.cols.size

    @property
    def tile_shape(self) -> tuple[int, int]:
        return (self.rows.tile, self.cols.tile)

    @property
    def grid(self) -> tuple[int, int]:
        """Tiles down and across; tiles are ordered row-major."""
        return (self.rows.count, self.cols.count)

    @property
    def num_tiles(self) -> int:
        return self.rows.count * self.cols.count

    @property
    def waste_ratio(self) -> float:
        """Pixels the model runs on / image pixels (1.0 would be no padding and no overlap)."""
        return self.num_tiles * self.rows.tile * self.cols.tile / (self.height * self.width)


def plan_tiles(
    height: int, width: int, tile_size: int, overlap: int, *, multiple: int, context: int | None = None,
    buckets: bool = True,
) -> TilePlan:  # fmt: skip
    """Plan the tiles for a height x width image (all tiles share one shape); `multiple` is the
    model's size multiple; `context` and `buckets` as in `plan_axis`."""
    return TilePlan(
        rows=plan_axis(height, tile_size, overlap, multiple=multiple, context=context, buckets=buckets),
        cols=plan_axis(width, tile_size, overlap, multiple=multiple, context=context, buckets=buckets),
    )


def _check_image(image: np.ndarray, plan: TilePlan) -> None:
    if image.ndim != 3 or image.shape[:2] != (plan.height, plan.width):
        raise ValueError(f"image of shape {image.shape} does not match the plan's {plan.height}x{plan.width}xC")


def split(image: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Cut an HxWxC image into the plan's tiles, [T, th, tw, C] in the image's sample type,
    mirror-padded at borders.

    Tiles are gathered from the image one band of tile rows at a time (whole rows, then whole
    pixels: two 1-D `take`s copy contiguous runs, much faster than one 2-D fancy index; see
    benchmarks/RESULTS.md), so no padded copy of the whole image is made, only one band of rows.
    """
    _check_image(image, plan)
    th, tw = plan.tile_shape
    rows, cols = plan.rows.source_index(), plan.cols.source_index()
    tiles = np.empty((plan.num_tiles, th, tw, image.shape[2]), dtype=image.dtype)
    k = 0
    for y in plan.rows.starts:
        band = np.take(image, rows[y : y + th], axis=0)
        for x in plan.cols.starts:
            tiles[k] = np.take(band, cols[x : x + tw], axis=1)
            k += 1
    return tiles


def stitch(tiles: np.ndarray, plan: TilePlan, *, scale: int = 1, dtype: np.dtype = np.float32) -> np.ndarray:
    """Blend [T, th*scale, tw*scale, C] model outputs into an (H*scale)x(W*scale)xC image (weights
    sum to 1 everywhere). `scale` is the model's: its tiles are that much larger than the plan's,
    and the blend windows are laid out at that (output) resolution.

    Tiles may be float or integer samples (enhancer.samples); the result is `dtype`: float32 as
    blended, or integer samples clipped and rounded. Blending runs in float32 over a strip of at
    most STRIP_VALUES values at a time, whatever the tile's height: a tile row's strip sums every
    tile of the row (plus what earlier tile rows left in the rows it shares with them) and its rows
    are written out at once, except those the next tile row also covers, which are carried over to
    it. So with an integer `dtype` no float copy of the whole image exists, nor one of a whole tile
    row, and no full-size weight map either (the weights are outer products of per-axis windows).
    The strip sums the tiles' own sample values, scaled to [0, 1] once as its rows are written out,
    and a tile's inside, where its weight is 1, is added without multiplying: most of a tile's
    pixels, and most of the time a large answer's stitching took.
    """
    if scale < 1:
        raise ValueError(f"scale must be at least 1, got {scale}")
    rows, cols = plan.rows.scaled(scale), plan.cols.scaled(scale)
    th, tw = rows.tile, cols.tile
    if tiles.ndim != 4 or tiles.shape[0] != plan.num_tiles or tiles.shape[1:3] != (th, tw):
        raise ValueError(f"expected {plan.num_tiles} tiles of {th}x{tw}xC, got an array of shape {tiles.shape}")
    channels = tiles.shape[3]
    white = np.float32(white_value(tiles.dtype))
    out = np.empty((rows.size, cols.size, channels), dtype=dtype)

    def write_out(values: np.ndarray, top: int) -> None:
        if white != 1:
            np.divide(values, white, out=values)  # the strip is scratch: scaled in place
        from_unit_float(values, out.dtype, out=out[top : top + len(values)])

    # Each tile row that lands on the image: its first tile's index, its origin, window and image rows.
    row_windows = [w.astype(np.float32) for w in rows.windows()]
    col_windows = [w.astype(np.float32) for w in cols.windows()]
    spans = []
    for i, (y, wy) in enumerate(zip(rows.starts, row_windows)):
        top, bottom = max(y, rows.pad_before) - rows.pad_before, min(y + th, rows.pad_before + rows.size) - rows.pad_before
        if top < bottom:  # else a tile row of mirrored context only
            spans.append((i * cols.count, y - rows.pad_before, wy, top, bottom))
    strip_rows = max(1, STRIP_VALUES // max(1, cols.size * channels))
    carry, carry_top = np.zeros((0, cols.size, channels), np.float32), 0  # rows summed, not yet final
    for n, (first, origin, wy, top, bottom) in enumerate(spans):
        final_below = spans[n + 1][3] if n + 1 < len(spans) else rows.size  # the next tile row's top
        parts = []
        for a in range(top, bottom, strip_rows):
            b = min(a + strip_rows, bottom)
            strip = np.zeros((b - a, cols.size, channels), np.float32)
            lo, hi = max(a, carry_top), min(b, carry_top + len(carry))
            if lo < hi:  # rows an earlier tile row also covered
                strip[lo - a : hi - a] += carry[lo - carry_top : hi - carry_top]
            for k, (x, wx) in enumerate(zip(cols.starts, col_windows)):
                x0, x1 = max(x, cols.pad_before), min(x + tw, cols.pad_before + cols.size)
                if x0 < x1:
                    left = x0 - cols.pad_before
                    _add_weighted(
                        strip[:, left : left + x1 - x0],
                        tiles[first + k, a - origin : b - origin, x0 - x : x1 - x],
                        wy[a - origin : b - origin],
                        wx[x0 - x : x1 - x],
                    )
            if a < final_below:
                write_out(strip[: min(b, final_below) - a], a)
            if b > final_below:  # shared with the next tile row: summed there
                parts.append(strip[max(a, final_below) - a :])
        carry = np.concatenate(parts) if parts else carry[:0]
        carry_top = final_below
    return out


def _ones_span(weights: np.ndarray) -> tuple[int, int]:
    """The run [begin, end) where a window is exactly 1 (its middle; empty if it has none)."""
    ones = np.flatnonzero(weights == 1)
    if ones.size == 0 or ones[-1] - ones[0] + 1 != ones.size:
        return 0, 0
    return int(ones[0]), int(ones[-1]) + 1


def _add_weighted(target: np.ndarray, samples: np.ndarray, wy: np.ndarray, wx: np.ndarray) -> None:
    """target += samples * outer(wy, wx) per channel, multiplying only outside the span where
    both windows are 1."""
    r0, r1 = _ones_span(wy)
    c0, c1 = _ones_span(wx)
    if r0 == r1 or c0 == c1:
        r0 = r1 = c0 = c1 = 0  # no inside: the first piece below is the whole tile
    np.add(target[r0:r1, c0:c1], samples[r0:r1, c0:c1], out=target[r0:r1, c0:c1])
    # above and below the inside (whole width), then left and right of it
    for rows_part, cols_part in (
        (slice(0, r0), slice(None)),
        (slice(r1, None), slice(None)),
        (slice(r0, r1), slice(0, c0)),
        (slice(r0, r1), slice(c1, None)),
    ):
        part = samples[rows_part, cols_part]
        if part.size:
            target[rows_part, cols_part] += part * np.outer(wy[rows_part], wx[cols_part])[..., None]


def run_in_batches(
    tiles: np.ndarray,
    forward: Callable[[np.ndarray], np.ndarray],
    batch_size: int,
    *,
    scale: int = 1,
    progress: Callable[[int], None] | None = None,
    output_dtype: np.dtype = np.float32,
) -> np.ndarray:
    """Run `forward` (float32 [N, th, tw, C] in [0, 1] -> [N, th*scale, tw*scale, C]) over tiles,
    `batch_size` at a time, synchronously; outputs in tile order, as samples of `output_dtype`
    (enhancer.samples). Tiles of integer samples become float32 one batch at a time. With float32
    tiles, float32 outputs and scale 1 the outputs are written over `tiles` (no second array of
    tiles). `progress`, if given, is called with the number of tiles finished in each batch. (The
    server batches tiles across requests instead.)
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    n, h, w, c = tiles.shape
    output_dtype = np.dtype(output_dtype)
    in_place = scale == 1 and tiles.dtype == np.float32 and output_dtype == np.float32
    outputs = tiles if in_place else np.empty((n, h * scale, w * scale, c), output_dtype)
    for begin in range(0, n, batch_size):
        chunk = to_unit_float(tiles[begin : begin + batch_size])
        result = np.asarray(forward(chunk))
        expected = (len(chunk), h * scale, w * scale, c)
        if result.shape != expected:
            raise ValueError(f"forward returned shape {result.shape} for a batch of shape {chunk.shape} (expected {expected})")
        from_unit_float(result, output_dtype, out=outputs[begin : begin + batch_size])
        if progress is not None:
            progress(len(chunk))
    return outputs


def enhance_tiled(
    image: np.ndarray,
    forward: Callable[[np.ndarray], np.ndarray],
    tile_size: int,
    overlap: int,
    batch_size: int,
    *,
    multiple: int,
    scale: int = 1,
    progress: Callable[[int], None] | None = None,
    context: int | None = None,
    buckets: bool = True,
) -> np.ndarray:
    """Split an HxWxC array (any sample type of enhancer.samples) into tiles, run `forward` over
    them (see run_in_batches) and stitch to float32: the tiled computation on bare pixels, for
    tests and benchmarks (`context` and `buckets` as in `plan_axis`). Whole images (decode, the
    pass-through decision, encode) go through enhancer.pipeline."""
    plan = plan_tiles(image.shape[0], image.shape[1], tile_size, overlap, multiple=multiple, context=context, buckets=buckets)
    outputs = run_in_batches(split(image, plan), forward, batch_size, scale=scale, progress=progress)
    return stitch(outputs, plan, scale=scale)
