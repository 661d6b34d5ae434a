"""JPEG damage for training, with the exact quantisation tables of the file that caused it.

Why record the tables: the served model is told the uploaded file's own tables (its second input),
so every training pair must carry the tables its JPEG really used. Files in the wild come from
many encoders, so the tables are drawn from several families: libjpeg's quality scaling (OpenCV,
Pillow, browsers, most software), Pillow's Photoshop-like presets, flat tables, and random smooth
tables standing in for camera and phone firmware. Chroma subsampling varies as encoders do.

The condition vector (`QUANTIZATION_LENGTH` floats) is laid out as the model contract documents:
64 luma steps and 64 chroma steps in natural row-major 8x8 order, then the horizontal and vertical
sampling factors of luma over chroma. Zero means unknown: all zeros is the blind path (not a JPEG
file), zero chroma steps a greyscale JPEG.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np

from enhancer.models.contract import QUANTIZATION_LENGTH

#: The IJG (Annex K) base tables, natural order; libjpeg scales them by quality.
IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
], dtype=np.float64)  # fmt: skip
IJG_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
] + [99] * 32, dtype=np.float64)  # fmt: skip

#: Pillow subsampling codes -> (horizontal, vertical) factors of luma over chroma.
SAMPLING = {0: (1, 1), 1: (2, 1), 2: (2, 2)}


def ijg_scale(table: np.ndarray, quality: int) -> np.ndarray:
    """libjpeg's `jpeg_quality_scaling` applied to a base table, clamped to baseline steps."""
    quality = int(np.clip(quality, 1, 100))
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality  # integer, as libjpeg computes it
    return np.clip((table.astype(np.int64) * scale + 50) // 100, 1, 255).astype(np.float64)


@dataclass(frozen=True)
class JpegRecipe:
    """One JPEG save: tables (natural order, 64 each), subsampling code, greyscale or colour."""

    luma: np.ndarray
    chroma: np.ndarray
    subsampling: int  # Pillow code: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0
    grayscale: bool = False
    quality: int | None = None  # the IJG quality, when the tables come from one

    def condition(self) -> np.ndarray:
        """The model's `quantization` input for a file saved with this recipe."""
        vector = np.zeros(QUANTIZATION_LENGTH, np.float32)
        vector[:64] = self.luma
        if not self.grayscale:
            vector[64:128] = self.chroma
            vector[128:] = SAMPLING[self.subsampling]
        else:
            vector[128:] = (1, 1)
        return vector


def sample_quality(rng: np.random.Generator) -> int:
    """Quality weighted toward heavy damage, with a third of saves at the 70-98 that phones and
    web sites use, where the model must learn to change almost nothing."""
    r = rng.random()
    if r < 0.15:
        return int(rng.choice((5, 10, 20, 30, 50)))
    if r < 0.35:
        return int(rng.integers(5, 21))
    if r < 0.62:
        return int(rng.integers(21, 70))
    return int(rng.integers(70, 99))


def _random_smooth_table(rng: np.random.Generator, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """A monotone table in frequency, of random slope and curvature, scaled like libjpeg's."""
    u, v = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    radius = np.sqrt(u**2 + v**2) / np.sqrt(98)
    tables = []
    for low, high in ((rng.uniform(6, 20), rng.uniform(50, 130)), (rng.uniform(10, 25), rng.uniform(60, 110))):
        base = low + (high - low) * radius ** rng.uniform(0.6, 1.8)
        tables.append(ijg_scale(base.ravel(), quality))
    return tables[0], tables[1]


def sample_recipe(rng: np.random.Generator, grayscale: bool = False) -> JpegRecipe:
    """Draw an encoder's save: table family, quality and chroma subsampling."""
    quality = sample_quality(rng)
    subsampling = int(rng.choice([2, 1, 0], p=[0.6, 0.1, 0.3]))
    family = rng.random()
    if family < 0.7:
        luma, chroma = ijg_scale(IJG_LUMA, quality), ijg_scale(IJG_CHROMA, quality)
        return JpegRecipe(luma, chroma, subsampling, grayscale, quality)
    if family < 0.8:
        from PIL import JpegPresets

        name = str(rng.choice(sorted(JpegPresets.presets)))
        preset = JpegPresets.presets[name]
        tables = preset["quantization"]
        luma = np.asarray(tables[0], np.float64)
        chroma = np.asarray(tables[1] if len(tables) > 1 else tables[0], np.float64)
        return JpegRecipe(luma, chroma, int(preset.get("subsampling", subsampling)), grayscale)
    if family < 0.88:
        step = float(np.clip(np.round(np.exp(rng.uniform(0, np.log(80)))), 1, 255))
        flat = np.full(64, step)
        return JpegRecipe(flat, flat.copy(), subsampling, grayscale)
    luma, chroma = _random_smooth_table(rng, quality)
    return JpegRecipe(luma, chroma, subsampling, grayscale)


def save_jpeg(image_bgr: np.ndarray, recipe: JpegRecipe) -> bytes:
    """Encode with Pillow (libjpeg) using exactly the recipe's tables and subsampling."""
    from PIL import Image

    if recipe.grayscale:
        grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
        picture, tables = Image.fromarray(grey), [recipe.luma.astype(int).tolist()]
        options = {}
    else:
        picture = Image.fromarray(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
        tables = [recipe.luma.astype(int).tolist(), recipe.chroma.astype(int).tolist()]
        options = {"subsampling": recipe.subsampling}
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", qtables=tables, **options)
    return buffer.getvalue()


def jpeg_round_trip(image_bgr: np.ndarray, recipe: JpegRecipe) -> np.ndarray:
    """Save with the recipe and decode with OpenCV, as the server decodes uploads (BGR, 3 channels)."""
    data = np.frombuffer(save_jpeg(image_bgr, recipe), np.uint8)
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def ijg_recipe(quality: int, subsampling: int = 2, grayscale: bool = False) -> JpegRecipe:
    """The tables OpenCV and Pillow use for `quality` (validation and evaluation saves)."""
    return JpegRecipe(ijg_scale(IJG_LUMA, quality), ijg_scale(IJG_CHROMA, quality), subsampling, grayscale, quality)
