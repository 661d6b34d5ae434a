"""What the conditioned model trains on: a weighted mix of content, each patch damaged the way a
real file would be, with the tables the model is told (or nothing, on the blind path).

Content (weights in `CONTENT_WEIGHTS`): photographs dominate; some are re-photographed (rotated by
a small angle and rescaled) for edge orientations 26 photos lack; dead leaves, rendered text and
interface layouts supply hard edges, glyphs and flat colour (see `training.synthetic`).

Damage: a conditioned patch is the top-left of a JPEG file (block grid at phase 0, as the server's
tiles are aligned to it), sometimes already compressed once before at another grid phase (a
re-saved crop); the model is told the last save's tables. A blind patch (not a JPEG file: PNG
made from a JPEG, screenshot) is told nothing: some are clean, which teaches it to leave clean
images alone, the rest carry JPEG damage at a random grid phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from enhancer.imaging.jpeg import estimate_quality
from enhancer.training import documents, jpeg_damage, synthetic, textures

CONTENT_WEIGHTS = {"photo": 0.55, "rephoto": 0.1, "dead_leaves": 0.12, "text": 0.11, "screen": 0.12}
#: Share of patches on the blind path, and of those, the share left clean.
BLIND_SHARE = 0.22
BLIND_CLEAN_SHARE = 0.35
#: Share of conditioned patches saved twice (first at a random grid phase).
DOUBLE_SHARE = 0.12
GREY_SHARE = 0.08

#: Mix 2 (`TrainConfig.mix`; mix 1 is the above, kept so its runs resume as they started) adds what
#: a model trained on mix 1 got wrong on good files: it smoothed noise that belongs to the picture
#: and tinted grey pictures. Photo and dead-leaves content carries sensor noise or grain in its
#: clean target (`synthetic.grain`); rendered text is half the time a scan (`synthetic.scanned`);
#: grey content is more common and is saved half the time as a colour JPEG (neutral chroma), as
#: scanners and phones save documents and black-and-white photos.
GRAIN_SHARE = 0.25
GRAIN_KINDS = ("photo", "rephoto", "dead_leaves")
GRAIN_MAX_SIGMA = 7.0
SCANNED_SHARE = 0.5
GREY_SHARE_MIX2 = 0.15
GREY_AS_COLOUR_FILE = 0.5

#: Mix 3 adds real scanned pages (`training.documents`), which mix 2's simulated scans did not
#: teach: models trained on mix 2 smoothed them at high quality. Everything else is mix 2.
CONTENT_WEIGHTS_MIX3 = {"photo": 0.5, "rephoto": 0.09, "dead_leaves": 0.11, "text": 0.09, "screen": 0.11,
                        "document": 0.1}  # fmt: skip

#: Mix 4 adds the hard truths of enhancer.training.step_calibration, where models trained on mix 3
#: lose on validation at high quality: an earlier save at a good quality (>= GOOD_EARLIER_QUALITY)
#: is part of the picture, so the target keeps it (a worse one is still damage to remove), and
#: more patches are saved twice; noise or grain also belongs to text and scanned pages, and is
#: stronger. Everything else is mix 3.
DOUBLE_SHARE_MIX4 = 0.25
GOOD_EARLIER_QUALITY = 70
GRAIN_KINDS_MIX4 = ("photo", "rephoto", "dead_leaves", "text", "document")
GRAIN_MAX_SIGMA_MIX4 = 10.0

#: Mix 5 adds fine grey texture (`training.textures`: photographed bark, rock, sand, paper): on the
#: held-out tiles, models trained on mix 4 changed a clean soft texture on the blind path and lost
#: on it at middle and high qualities. Everything else is mix 4.
CONTENT_WEIGHTS_MIX5 = {"photo": 0.46, "rephoto": 0.08, "dead_leaves": 0.1, "text": 0.08, "screen": 0.1,
                        "document": 0.1, "texture": 0.08}  # fmt: skip

#: Mix 6 adds soft truths (`synthetic.soften`): content enlarged from a smaller copy (with bicubic
#: ringing), out of focus, or sharpened (halos). On held-out scans enlarged from a third of their
#: size, models trained on mix 5 lose at q75-q90: they take the soft glyphs' ringing for JPEG
#: damage. Text and pages are made soft more often than other content. Everything else is mix 5.
SOFT_SHARE_MIX6 = {"text": 0.3, "document": 0.3, "screen": 0.15}
SOFT_SHARE_OTHER_MIX6 = 0.12
SOFT_ENLARGED_FROM_MIX6 = (1.5, 4.0)
SOFT_SIGMA_MIX6 = (0.6, 2.0)
SOFT_SHARPENED_MIX6 = 0.35

#: Mix 7 adds re-saves at the same block grid (a JPEG opened and saved again without a crop, as most
#: editors and apps do): a share of the twice-saved patches keep the first save's grid, where mix 4
#: always moved it. On validation pictures saved that way the models trained on mix 6 remove a good
#: earlier save's blocks, which the file a user uploads holds as its picture
#: (training-runs/probes-phase0). Everything else is mix 6.
SAME_GRID_SHARE_MIX7 = 0.4


@dataclass(frozen=True)
class Sample:
    damaged: np.ndarray  # H x W x 3 float32 RGB in [0, 1]
    clean: np.ndarray
    quantization: np.ndarray  # the model's condition input (zeros on the blind path)
    kind: str


def _dihedral(image: np.ndarray, k: int) -> np.ndarray:
    image = np.rot90(image, k % 4)
    return np.ascontiguousarray(image[:, ::-1] if k >= 4 else image)


def _rgb01(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


class MixtureSampler:
    """Deterministic stream of batches: batch `step` depends only on (seed, step), so a resumed
    run sees the data an uninterrupted run would have seen."""

    def __init__(self, photos: list[np.ndarray], fonts: list[Path], patch_size: int, batch_size: int, seed: int,
                 mix: int = 1, pages: list[np.ndarray] = (), textures: list[np.ndarray] = ()):
        if patch_size % 16:
            raise ValueError(f"patch size must be a multiple of 16 (the 4:2:0 block grid), got {patch_size}")
        need = 3 * (patch_size + 16)  # a re-photographed crop at half scale, rotated, needs this much
        self.photos = [im for im in photos if min(im.shape[:2]) >= need]
        if not self.photos:
            raise ValueError(f"no training photo is at least {need} px on its short side")
        if not fonts:
            raise ValueError("no fonts for the rendered-text content (run `enhancer fetch-fonts`)")
        areas = np.array([im.shape[0] * im.shape[1] for im in self.photos], dtype=np.float64)
        self.photo_weights = areas / areas.sum()
        self.fonts = list(fonts)
        self.patch_size, self.batch_size, self.seed = patch_size, batch_size, seed
        if mix not in (1, 2, 3, 4, 5, 6, 7):
            raise ValueError(f"unknown training mix {mix} (1 to 7)")
        self.pages = [p for p in pages if min(p.shape[:2]) >= patch_size + 16]
        if mix >= 3 and not self.pages:
            raise ValueError(f"training mix {mix} needs scanned pages at least {patch_size + 16} px on their short side "
                             "(run `enhancer fetch-scans`)")  # fmt: skip
        self.textures = list(textures)
        if mix >= 5 and not self.textures:
            raise ValueError(f"training mix {mix} needs texture tiles (run `enhancer fetch-textures`)")
        self.mix = mix
        weights = CONTENT_WEIGHTS_MIX5 if mix >= 5 else CONTENT_WEIGHTS_MIX3 if mix >= 3 else CONTENT_WEIGHTS  # mix 4: 3's
        self.kinds = list(weights)
        self.kind_weights = np.array([weights[k] for k in self.kinds])

    def content(self, rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
        """A clean BGR region of `size` x `size` pixels of the given kind."""
        if kind in ("photo", "rephoto"):
            image = self.photos[rng.choice(len(self.photos), p=self.photo_weights)]
            h, w = image.shape[:2]
            if kind == "photo":
                top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
                return image[top : top + size, left : left + size]
            scale = rng.uniform(0.5, 1.0)
            angle = rng.uniform(-30, 30)
            span = int(np.ceil(size / scale * 1.5))
            top, left = int(rng.integers(0, h - span + 1)), int(rng.integers(0, w - span + 1))
            centre = (left + span / 2, top + span / 2)
            matrix = cv2.getRotationMatrix2D(centre, angle, scale)
            matrix[:, 2] += (size / 2 - centre[0], size / 2 - centre[1])
            return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
        if kind == "dead_leaves":
            return synthetic.dead_leaves(rng, size)
        if kind == "document":
            return documents.document_crop(rng, self.pages, size)
        if kind == "texture":
            return textures.texture_crop(rng, self.textures, size)
        if kind == "text":
            page = synthetic.text_page(rng, size, self.fonts)
            return synthetic.scanned(page, rng) if self.mix >= 2 and rng.random() < SCANNED_SHARE else page
        return synthetic.screen(rng, size, self.fonts)

    def sample(self, rng: np.random.Generator) -> Sample:
        size = self.patch_size
        kind = self.kinds[rng.choice(len(self.kinds), p=self.kind_weights)]
        # Flips and rotations come before the JPEG save, so the file's block grid stays at phase 0.
        region = _dihedral(self.content(rng, kind, size + 16), int(rng.integers(0, 8)))
        if rng.random() < 0.5:  # colours our few photos lack (saturated purples, cyans)
            region = np.ascontiguousarray(region[..., list(rng.permutation(3))])
        if self.mix >= 6 and rng.random() < SOFT_SHARE_MIX6.get(kind, SOFT_SHARE_OTHER_MIX6):
            region = synthetic.soften(region, rng, SOFT_ENLARGED_FROM_MIX6, SOFT_SIGMA_MIX6, SOFT_SHARPENED_MIX6)
        grain_kinds, grain_sigma = (GRAIN_KINDS_MIX4, GRAIN_MAX_SIGMA_MIX4) if self.mix >= 4 else (GRAIN_KINDS, GRAIN_MAX_SIGMA)
        if self.mix >= 2 and kind in grain_kinds and rng.random() < GRAIN_SHARE:
            region = synthetic.grain(region, rng, grain_sigma)
        grey = rng.random() < (GREY_SHARE_MIX2 if self.mix >= 2 else GREY_SHARE)
        if grey:
            region = cv2.cvtColor(cv2.cvtColor(region, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
            if self.mix >= 2 and rng.random() < GREY_AS_COLOUR_FILE:
                grey = False  # grey pixels in a colour file: the file's chroma is flat
        if rng.random() < BLIND_SHARE:
            condition = np.zeros(jpeg_damage.QUANTIZATION_LENGTH, np.float32)
            dy, dx = (int(v) for v in rng.integers(0, 16, 2))
            clean = region[dy : dy + size, dx : dx + size]
            if rng.random() < BLIND_CLEAN_SHARE:
                damaged = clean
            else:
                damaged = jpeg_damage.jpeg_round_trip(region, jpeg_damage.sample_recipe(rng, grey))[dy : dy + size, dx : dx + size]
            label = f"{kind}/blind"
        else:
            if rng.random() < (DOUBLE_SHARE_MIX4 if self.mix >= 4 else DOUBLE_SHARE):
                first = jpeg_damage.sample_recipe(rng, grey)
                dy, dx = (int(v) for v in rng.integers(1, 16, 2))
                if self.mix >= 7 and rng.random() < SAME_GRID_SHARE_MIX7:
                    dy = dx = 0
                saved_once = jpeg_damage.jpeg_round_trip(region, first)
                region_in = saved_once[dy : dy + size, dx : dx + size]
                keep_first = self.mix >= 4 and estimate_quality(first.luma.reshape(8, 8)) >= GOOD_EARLIER_QUALITY
                clean = region_in if keep_first else region[dy : dy + size, dx : dx + size]
            else:
                region_in = clean = region[:size, :size]
            recipe = jpeg_damage.sample_recipe(rng, grey)
            damaged = jpeg_damage.jpeg_round_trip(np.ascontiguousarray(region_in), recipe)
            condition = recipe.condition()
            label = kind
        return Sample(
            damaged=_rgb01(damaged),
            clean=_rgb01(clean),
            quantization=condition,
            kind=label,
        )

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, step])
        samples = [self.sample(rng) for _ in range(self.batch_size)]
        return (
            np.stack([s.damaged for s in samples]),
            np.stack([s.clean for s in samples]),
            np.stack([s.quantization for s in samples]),
        )
