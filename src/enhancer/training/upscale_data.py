"""What the upscalers train on: a clean region, made small the ways real small images are made,
then (mostly) saved as a JPEG whose tables the model is told.

Small images on the web were usually downscaled with an antialiasing filter (bicubic as Pillow
and MATLAB do it, sometimes area averaging or bilinear, sometimes after a little blur), then saved
as JPEG at the qualities Real-ESRGAN and BSRGAN train with (30-95). The rest stay clean; those are
told either nothing (the blind path a PNG takes) or "steps of 1" (the condition strength=off
sends: no compression damage). The content mix is the restorer's (`training.mixture`).

Mix 3 adds what upscalers trained on mix 2 lost to bicubic on: fine grey texture (`training.textures`)
and soft truths, pictures that were already soft (enlarged before, or out of focus), where the
network must not invent the sharpness it was trained to restore. Mix 4 makes its enlarged truths
soft enough that the small image shows it (see `SOFT_ENLARGED_FROM_MIX4`) and draws more texture;
mix 5 draws more texture again.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from enhancer.training import jpeg_damage, synthetic
from enhancer.training.mixture import MixtureSampler, _dihedral, _rgb01

CONTENT_WEIGHTS = {"photo": 0.6, "rephoto": 0.1, "dead_leaves": 0.1, "text": 0.1, "screen": 0.1}
CONTENT_WEIGHTS_MIX3 = {"photo": 0.52, "rephoto": 0.09, "dead_leaves": 0.09, "text": 0.09, "screen": 0.09,
                        "texture": 0.12}  # fmt: skip
#: Mix 4: more texture, where models trained on mix 3 still lose to bicubic on held-out tiles at q50-75.
CONTENT_WEIGHTS_MIX4 = {"photo": 0.48, "rephoto": 0.08, "dead_leaves": 0.08, "text": 0.08, "screen": 0.08,
                        "texture": 0.2}  # fmt: skip
#: Mix 5: texture drawn half as often again, where models trained on mix 4 still lose to bicubic on
#: held-out fine-grain tiles at q50 (photographs still the largest share).
CONTENT_WEIGHTS_MIX5 = {"photo": 0.42, "rephoto": 0.07, "dead_leaves": 0.07, "text": 0.07, "screen": 0.07,
                        "texture": 0.3}  # fmt: skip
#: Mix 3: share of samples whose truth is soft, and how: enlarged from this much smaller (bicubic),
#: or blurred with this Gaussian sigma (in large-image pixels), half each.
SOFT_SHARE = 0.12
SOFT_ENLARGED_FROM = (1.5, 3.0)
SOFT_SIGMA = (1.0, 2.5)
#: Mix 4 also corrects mix 3's enlarged truths: one enlarged from k <= scale times smaller looks, once made
#: `scale` times smaller, like any sharp picture, so the network could not tell it was soft. Mix 4
#: enlarges from more than `scale` times smaller (these factors times `scale`); everything else is mix 3.
SOFT_ENLARGED_FROM_MIX4 = (1.25, 2.0)
#: Share of samples saved as JPEG (the rest are clean).
JPEG_SHARE = 0.7
#: Of the JPEG samples, the share with IJG tables at quality 30-95 (others: any encoder's recipe).
IJG_SHARE = 0.8
#: Share of samples blurred a little before downscaling.
BLUR_SHARE = 0.2
GREY_SHARE = 0.05
#: Downscaling filters and their shares.
DOWNSCALERS = {"pil_bicubic": 0.6, "area": 0.2, "pil_bilinear": 0.2}


def no_damage_condition() -> np.ndarray:
    """The condition of an image with no compression damage: every step 1, no subsampling."""
    vector = np.ones(jpeg_damage.QUANTIZATION_LENGTH, np.float32)
    vector[128:] = (1, 1)
    return vector


def downscale(image_bgr: np.ndarray, scale: int, method: str) -> np.ndarray:
    """`image_bgr` made `scale` times smaller with an antialiasing filter."""
    h, w = image_bgr.shape[:2]
    size = (w // scale, h // scale)
    if method == "area":
        return cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA)
    resample = Image.Resampling.BICUBIC if method == "pil_bicubic" else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(np.ascontiguousarray(image_bgr)).resize(size, resample))


class UpscaleSampler:
    """Deterministic stream of (small, large, condition) batches; batch `step` depends only on
    (seed, step), so a resumed run sees what an uninterrupted one would have."""

    def __init__(self, photos: list[np.ndarray], fonts: list[Path], patch_size: int, batch_size: int, seed: int, scale: int,
                 mix: int = 1, textures: list[np.ndarray] = ()):
        if patch_size % 16:
            raise ValueError(f"patch size (of the small image) must be a multiple of 16, got {patch_size}")
        if mix not in (1, 2, 3, 4, 5):
            raise ValueError(f"an upscaler trains on mix 1 to 5, not {mix}")
        self.textures = list(textures)
        if mix >= 3 and not self.textures:
            raise ValueError(f"an upscaler's mix {mix} needs texture tiles (run `enhancer fetch-textures`)")
        # the content of the restorer's mix 2 (its mix 3 and 4 are about scanned pages and re-saves),
        # which also draws the texture tiles when this mix names them
        self.content_source = MixtureSampler(photos, fonts, patch_size * scale, batch_size, seed, min(mix, 2),
                                             textures=self.textures)
        self.patch_size, self.batch_size, self.seed, self.scale, self.mix = patch_size, batch_size, seed, scale, mix
        weights = {5: CONTENT_WEIGHTS_MIX5, 4: CONTENT_WEIGHTS_MIX4, 3: CONTENT_WEIGHTS_MIX3}.get(mix, CONTENT_WEIGHTS)
        self.kinds = list(weights)
        self.kind_weights = np.array([weights[k] for k in self.kinds])
        self.downscalers = list(DOWNSCALERS)
        self.downscaler_weights = np.array([DOWNSCALERS[k] for k in self.downscalers])

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        large_size = self.patch_size * self.scale
        kind = self.kinds[rng.choice(len(self.kinds), p=self.kind_weights)]
        large = _dihedral(self.content_source.content(rng, kind, large_size), int(rng.integers(0, 8)))
        if self.mix >= 3 and rng.random() < SOFT_SHARE:
            enlarged_from = (tuple(f * self.scale for f in SOFT_ENLARGED_FROM_MIX4) if self.mix >= 4
                             else SOFT_ENLARGED_FROM)  # fmt: skip
            large = synthetic.soften(large, rng, enlarged_from, SOFT_SIGMA)
        if rng.random() < 0.5:
            large = np.ascontiguousarray(large[..., list(rng.permutation(3))])
        grey = rng.random() < GREY_SHARE
        if grey:
            large = cv2.cvtColor(cv2.cvtColor(large, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        source = large
        if rng.random() < BLUR_SHARE:
            sigma = rng.uniform(0.3, 0.4 * self.scale)
            source = cv2.GaussianBlur(large, (0, 0), sigma)
        method = self.downscalers[rng.choice(len(self.downscalers), p=self.downscaler_weights)]
        small = downscale(source, self.scale, method)
        if rng.random() < JPEG_SHARE:
            if rng.random() < IJG_SHARE:
                subsampling = int(rng.choice([2, 1, 0], p=[0.6, 0.1, 0.3]))
                recipe = jpeg_damage.ijg_recipe(int(rng.integers(30, 96)), subsampling, grayscale=grey)
            else:
                recipe = jpeg_damage.sample_recipe(rng, grey)
            small = jpeg_damage.jpeg_round_trip(small, recipe)
            condition = recipe.condition()
        elif rng.random() < 0.5:
            condition = no_damage_condition()
        else:
            condition = np.zeros(jpeg_damage.QUANTIZATION_LENGTH, np.float32)
        return _rgb01(small), _rgb01(large), condition

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, step])
        samples = [self.sample(rng) for _ in range(self.batch_size)]
        return tuple(np.stack(column) for column in zip(*samples))  # type: ignore[return-value]


def upscale_validation(photos: list[np.ndarray], fonts: list[Path], scale: int, crop: int = 384,
                       textures: list[np.ndarray] = (), soft_from: int = 2) -> dict[str, list]:
    """Fixed validation pairs for an upscaler: held-out photos (and rendered screens) made small
    with Pillow's bicubic, clean (told nothing, as a PNG is) and saved by OpenCV at q75 and q50
    (told their tables). With `textures` (mix 3: the held-out tiles) also those, clean and at q50,
    and the photos made soft (enlarged from `soft_from` times smaller: 2 for mix 3; mix 4 validates
    with 2 x scale, a softness the small image still shows), clean."""

    def centre(image):
        h, w = image.shape[:2]
        side = min(crop, h, w) // (16 * scale) * (16 * scale)
        return image[(h - side) // 2 :][:side, (w - side) // 2 :][:, :side]

    rng = np.random.default_rng(987_654_321)
    screens = [render(rng, crop, fonts) for render in (synthetic.text_page, synthetic.screen)]
    blind = np.zeros(jpeg_damage.QUANTIZATION_LENGTH, np.float32)
    pairs: dict[str, list] = {}
    photos, tiles = [centre(p) for p in photos], [centre(t) for t in textures]
    clean_sets = [("clean", photos), ("screen_clean", [centre(s) for s in screens])]
    if tiles:
        soft = [synthetic.enlarged(p, soft_from) for p in photos]
        clean_sets += [("texture_clean", tiles), ("soft_clean", soft)]
    for label, images in clean_sets:
        pairs[label] = [((_rgb01(downscale(im, scale, "pil_bicubic")), blind), _rgb01(im)) for im in images]
    told_sets = [(f"q{q}", photos, q) for q in (75, 50)] + ([("texture_q50", tiles, 50)] if tiles else [])
    for label, images, q in told_sets:
        recipe = jpeg_damage.ijg_recipe(q)
        pairs[label] = [
            ((_rgb01(jpeg_damage.jpeg_round_trip(downscale(im, scale, "pil_bicubic"), recipe)), recipe.condition()), _rgb01(im))
            for im in images
        ]
    return pairs
