"""Was this JPEG a coarser JPEG before, saved again at the same 8x8 block grid?

A picture decoded from a JPEG and saved again with its blocks where they were keeps the first
save's quantisation: its luma DCT coefficients were multiples of the first save's steps, and the
second save rounds those to multiples of its own finer steps. Multiples of the file's steps that no
multiple of the coarser step lands on stay empty. A single save of a picture without that history
fills the multiples smoothly (the coefficients' histogram falls off like a Laplacian), so whether the
occupied multiples follow a coarser step tells the two apart.

The blocks of such a file were in the picture before the file was made: measured against that
picture, removing them is harm (training-runs/probes-phase0), so the pipeline answers such files
with their own pixels (enhancer.pipeline.resaved_jpeg_reason).

The coefficients are recomputed from the decoded pixels (no second JPEG decoder): luma from RGB with
the JFIF weights, which recovers the decoder's luma within a fraction of a step. Blocks with a
clipped sample are left out (clipping moves coefficients off the file's multiples), and a fixed
stride of block rows and columns bounds the work on large images.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np


def _dct_matrix() -> np.ndarray:
    """The orthonormal 8-point DCT-II (JPEG's forward DCT is this, applied to rows and columns)."""
    k = np.arange(8)
    matrix = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / 16) * np.sqrt(2 / 8)
    matrix[0] /= np.sqrt(2)
    return matrix


_DCT = _dct_matrix().astype(np.float32)
#: The low-frequency AC coefficients examined, (row, column): where most non-zero values are.
POSITIONS = ((0, 1), (1, 0), (2, 0), (1, 1), (0, 2), (0, 3), (1, 2), (2, 1), (3, 0))
#: Multiples of the file's step examined (1..this).
HIGHEST_MULTIPLE = 40
#: A multiple counts as occupied with at least this many coefficients ...
MIN_COUNT = 20
#: ... and at least this share of the largest count among its neighbours (two either side), so
#: that coefficients a rounding error moved next to an occupied multiple do not count.
MIN_SHARE_OF_NEIGHBOURS = 0.2
#: A position is judged when at least this many multiples are occupied.
MIN_OCCUPIED = 3
#: A coarser step fits a position when at least this share of its multiples (up to the largest
#: occupied one) are occupied, ...
MIN_FILLED = 0.8
#: ... they are at most this share of the file's multiples (a real gap between them), ...
MAX_COVERAGE = 0.7
#: ... and the coefficients off them are at most this share of what an even spread would put there.
MAX_OFF_LATTICE = 0.5
#: Positions needed before any answer is given.
MIN_JUDGED = 3
#: The share of judged positions from which a file counts as re-saved (`is_resaved`).
RESAVED_SHARE = 0.5
#: At most this many blocks are examined (a fixed stride over the image's blocks).
MAX_BLOCKS = 16384
#: JFIF's luma weights for R, G, B.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _luma_blocks(pixels: np.ndarray) -> np.ndarray:
    """The 8x8 blocks of the luma at grid phase 0 without a clipped sample, level-shifted,
    (N, 8, 8) float32, from H x W x 3 uint8 RGB; a fixed stride of block rows and columns keeps
    at most about MAX_BLOCKS of them."""
    rows, cols = pixels.shape[0] // 8, pixels.shape[1] // 8
    if not rows or not cols:
        return np.zeros((0, 8, 8), np.float32)
    stride = max(1, int(np.ceil(np.sqrt(rows * cols / MAX_BLOCKS))))
    grid = pixels[: rows * 8, : cols * 8].reshape(rows, 8, cols, 8, 3)[::stride, :, ::stride]
    rows, cols = grid.shape[0], grid.shape[2]
    image = np.ascontiguousarray(grid).reshape(rows * 8, cols * 8, 3)  # the kept blocks, side by side
    inside = cv2.inRange(image, (1, 1, 1), (254, 254, 254))  # 255 where no channel is clipped
    whole = inside.reshape(rows, 8, cols, 8).min(axis=(1, 3)) > 0
    luma = cv2.transform(image.astype(np.float32), _LUMA[None, :]).reshape(rows, 8, cols, 8)
    return luma.swapaxes(1, 2)[whole] - np.float32(128)


@lru_cache(maxsize=4096)
def _lattice(coarser: int, step: int, highest: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the multiples of the step `coarser` land in multiples of the file's `step` after the
    file's rounding, up to `highest`: per multiple its one landing place, or the two either side
    of an exact half (a rounding error decides), as (first, second) arrays (equal for one place),
    and the sorted places."""
    ratio = coarser / step
    first, second = [], []
    for m in range(1, int(highest / ratio + 0.5) + 1):
        value = m * ratio
        below = int(np.floor(value))
        places = [below, below + 1] if abs(value - below - 0.5) < 0.05 else [int(np.rint(value))]
        places = [k for k in places if 1 <= k <= highest]
        if places:
            first.append(places[0])
            second.append(places[-1])
    return np.array(first, np.int64), np.array(second, np.int64), np.union1d(first, second).astype(np.int64)


def _fits_coarser_step(counts: np.ndarray, step: int) -> bool | None:
    """Whether one position's counts per multiple (index = |multiple|) sit on the multiples of a
    step at least 1.5 times the file's `step`; None when too few multiples are occupied to judge."""
    padded = np.pad(counts, 2)
    padded[2] = 0  # the zero multiple (most coefficients) is no neighbour to compare with
    neighbours = np.max([padded[i : i + len(counts)] for i in (0, 1, 3, 4)], axis=0)
    occupied = (counts >= MIN_COUNT) & (counts >= MIN_SHARE_OF_NEIGHBOURS * neighbours)
    occupied[0] = False
    found = np.flatnonzero(occupied)
    if len(found) < MIN_OCCUPIED:
        return None
    highest = int(found[-1])
    mass = counts[1 : highest + 1].sum()
    for coarser in range(int(np.ceil(1.5 * step)), highest * step // 2 + 1):
        first, second, places = _lattice(coarser, step, highest)
        coverage = len(places) / highest
        if len(first) < 2 or coverage > MAX_COVERAGE:
            continue
        if np.count_nonzero(occupied[first] | occupied[second]) < MIN_FILLED * len(first):
            continue
        if 1 - counts[places].sum() / mass <= MAX_OFF_LATTICE * (1 - coverage):
            return True
    return False


def coarser_lattice_share(pixels: np.ndarray, luma_table: np.ndarray) -> float | None:
    """The share of the examined positions whose coefficients (of `pixels`, the decoded JPEG as
    H x W x 3 uint8 RGB) sit on a coarser step than the file's (an earlier save at the same grid),
    or None when too few positions can be judged (small images, flat or clipped ones, screen
    content with few distinct values).

    About 0 for a single save; near 1 for a re-save at the same grid of a file whose steps were at
    least 1.5 times these.
    """
    luma = _luma_blocks(np.asarray(pixels))
    if not len(luma):
        return None
    coefficients = _DCT @ luma @ _DCT.T
    table = np.maximum(np.asarray(luma_table, np.int64), 1)  # integers (a coarser step is one too); a 0 read as 1
    verdicts = []
    for row, col in POSITIONS:
        multiples = np.abs(np.rint(coefficients[:, row, col] / table[row, col])).astype(np.int64)
        counts = np.bincount(multiples, minlength=HIGHEST_MULTIPLE + 1)[: HIGHEST_MULTIPLE + 1]
        verdict = _fits_coarser_step(counts, int(table[row, col]))
        if verdict is not None:
            verdicts.append(verdict)
    return float(np.mean(verdicts)) if len(verdicts) >= MIN_JUDGED else None


def is_resaved(pixels: np.ndarray, luma_table: np.ndarray) -> bool:
    """Whether the JPEG whose decoded `pixels` and luma table these are was a coarser JPEG before,
    at the same block grid (`coarser_lattice_share` at least RESAVED_SHARE)."""
    share = coarser_lattice_share(pixels, luma_table)
    return share is not None and share >= RESAVED_SHARE
