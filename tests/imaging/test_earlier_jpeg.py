"""Telling a JPEG saved again at the same block grid from a single save (enhancer.imaging.earlier_jpeg)."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from helpers import REPO_ROOT, encode_bgr, photo_like
from PIL import Image

from enhancer import imaging
from enhancer.conditioning import upright_luma_table
from enhancer.imaging.earlier_jpeg import coarser_lattice_share, is_resaved

PHOTO = cv2.imread(str(REPO_ROOT / "tests" / "data" / "held_out_photo.png"), cv2.IMREAD_COLOR)


def _jpeg(bgr: np.ndarray, quality: int) -> bytes:
    return encode_bgr(bgr, ".jpg", cv2.IMWRITE_JPEG_QUALITY, quality)


def _decoded(bgr: np.ndarray, quality: int) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(_jpeg(bgr, quality), np.uint8), cv2.IMREAD_COLOR)


def _share(data: bytes) -> float | None:
    image = imaging.decode(data)
    return coarser_lattice_share(image.pixels, image.info.jpeg.luma_table)


@pytest.mark.parametrize("image", ["photo", "synthetic"])
def test_single_saves_are_not_taken_for_re_saves(image):
    bgr = PHOTO if image == "photo" else photo_like(256, 384, seed=3)
    shares = [_share(_jpeg(bgr, q)) for q in (50, 70, 80, 90, 95)]
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    for subsampling in (0, 2):  # Pillow's own tables and subsamplings
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, "JPEG", quality=88, subsampling=subsampling)
        shares.append(_share(buffer.getvalue()))
    judged = [s for s in shares if s is not None]
    assert len(judged) >= 4  # most could be judged: the test is not vacuous
    assert max(judged) < 0.5, shares


@pytest.mark.parametrize("first,quality", [(50, 85), (70, 90), (50, 95)])
def test_a_re_save_at_the_same_grid_is_found(first, quality):
    data = _jpeg(_decoded(PHOTO, first), quality)
    image = imaging.decode(data)
    assert is_resaved(image.pixels, image.info.jpeg.luma_table)


def test_a_re_save_with_the_grid_moved_is_not():
    """The earlier blocks no longer line up with the file's: its coefficients show no coarser step
    (such files are among the training's kept truths, and the model handles them)."""
    padded = np.pad(PHOTO, ((3, 0), (5, 0), (0, 0)), mode="reflect")
    earlier = _decoded(padded, 50)[3:, 5:]
    image = imaging.decode(_jpeg(earlier, 90))
    assert not is_resaved(image.pixels, image.info.jpeg.luma_table)


def test_a_re_save_shown_rotated_by_exif_is_found_with_the_table_turned():
    """Orientation 6 turns the stored blocks: the upright pixels are judged with the file's steps
    read as they apply to them (conditioning.upright_luma_table, whose transposition
    test_conditioning checks)."""
    earlier = _decoded(photo_like(256, 384, seed=3), 50)  # whole MCUs: the grid survives the rotation
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(cv2.cvtColor(earlier, cv2.COLOR_BGR2RGB)).save(buffer, "JPEG", exif=exif, quality=90, subsampling=2)
    image = imaging.decode(buffer.getvalue())
    assert image.info.orientation == 6 and image.pixels.shape[:2] == (384, 256)
    assert is_resaved(image.pixels, upright_luma_table(image.info))


def test_images_with_too_little_to_judge_give_no_answer():
    assert coarser_lattice_share(np.zeros((6, 6, 3), np.uint8), np.full((8, 8), 2)) is None  # no whole block
    white = imaging.decode(_jpeg(np.full((64, 64, 3), 255, np.uint8), 90))
    assert coarser_lattice_share(white.pixels, white.info.jpeg.luma_table) is None  # clipped everywhere
    assert not is_resaved(white.pixels, white.info.jpeg.luma_table)


def test_a_table_with_zero_steps_is_read_without_failing():
    """A hand-made file may declare a step of 0: it is read as 1, not divided by."""
    image = imaging.decode(_jpeg(_decoded(PHOTO, 50), 90))
    table = np.array(image.info.jpeg.luma_table, np.int64)
    table[0, 1] = table[1, 0] = 0
    share = coarser_lattice_share(image.pixels, table)
    assert share is None or 0.0 <= share <= 1.0


def test_a_large_image_is_judged_on_a_bounded_sample_of_blocks():
    """A fixed stride of block rows and columns: the same verdict on a large re-save."""
    big = cv2.resize(PHOTO, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    big = (big.astype(np.int16) + np.random.default_rng(0).integers(-6, 7, big.shape)).clip(0, 255).astype(np.uint8)
    image = imaging.decode(_jpeg(_decoded(big, 50), 90))
    assert is_resaved(image.pixels, image.info.jpeg.luma_table)
    single = imaging.decode(_jpeg(big, 90))
    assert not is_resaved(single.pixels, single.info.jpeg.luma_table)
