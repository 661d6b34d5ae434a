"""Choose how much smaller than the file's steps a restorer is told under strength auto.

Why: a restorer trained mostly on heavy damage over-restores good files. On validation images
whose truth holds what it takes for damage (camera noise, an earlier JPEG's blocks, noisy pages)
it loses PSNR from about quality 85 up, while on clean photos and screens its gain there barely
depends on the steps it is told. Telling it smaller steps (which also narrows its projection) trades
a little mean gain for a bound on the worst image. The result is the `auto_step_scale` of the
model's metadata.json (enhancer.models.contract), which the server applies (enhancer.conditioning).

Measured on validation images only: the held-out photos, scans and rendered screens as they are,
plus "hard truths" made from them (a user's photo often is one). The test set chooses nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np

from enhancer.models.contract import METADATA_FILE

log = logging.getLogger(__name__)

QUALITIES = (10, 20, 30, 50, 60, 70, 75, 80, 85, 90, 92, 95)
FACTORS = (1.0, 0.85, 0.7, 0.6, 0.5, 0.42, 0.35, 0.25)
#: The worst validation image may lose at most this (dB) at a chosen factor (issue target: -0.1 on
#: unseen photos, which are harder than ours, so the validation gets no slack).
WORST_FLOOR_DB = 0.0


def noisy(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Camera-like noise in the truth: mostly luminance, a third as much per colour channel."""
    luma = rng.normal(0, sigma, image.shape[:2])[..., None]
    colour = rng.normal(0, sigma / 3, image.shape)
    return np.clip(image + luma + colour, 0, 255).round().astype(np.uint8)


def was_jpeg(image: np.ndarray, quality: int = 85, shift: tuple[int, int] = (3, 5)) -> np.ndarray:
    """The image as an earlier JPEG (OpenCV, 4:2:0) whose block grid a crop moved by `shift`."""
    from enhancer.training.evaluate import save_jpeg_opencv

    dy, dx = shift
    padded = cv2.copyMakeBorder(image, dy, 0, dx, 0, cv2.BORDER_REFLECT)
    data = save_jpeg_opencv(padded, quality)
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[dy:, dx:]


def calibration_content(data_dir: Path, fonts_dir: Path, scans_dir: Path, crop: int = 512) -> dict[str, list[np.ndarray]]:
    """The validation images per kind (BGR uint8): as they are, and as hard truths."""
    from enhancer.training import synthetic
    from enhancer.training.dataset import centre_crop, load_images

    rng = np.random.default_rng(5)
    photos = [centre_crop(p, crop) for p in load_images(data_dir / "val")]
    pages = [centre_crop(p, crop) for p in load_images(scans_dir / "val")] if (scans_dir / "val").is_dir() else []
    fonts = synthetic.list_fonts(fonts_dir)
    scans = [synthetic.scanned(synthetic.text_page(rng, crop, fonts), rng) for _ in range(3)]
    screens = [render(rng, crop, fonts) for render in (synthetic.text_page, synthetic.screen)]
    return {
        "photo": photos,
        "screen": screens,
        "scan": pages,
        "noise5": [noisy(p, 5, rng) for p in photos],
        "noise9": [noisy(p, 9, rng) for p in photos],
        "page-noise7": [noisy(p, 7, rng) for p in pages + scans],
        "was-jpeg85": [was_jpeg(p) for p in photos + pages],
    }


def measure(forward, content: dict[str, list[np.ndarray]], qualities=QUALITIES, factors=FACTORS) -> dict:
    """Per kind, quality and factor: each image's PSNR gain (dB, RGB) over its OpenCV JPEG when the
    model is told the file's steps times the factor (as enhancer.conditioning scales them)."""
    from enhancer import imaging
    from enhancer.conditioning import quantization_vector, scale_steps
    from enhancer.training.dataset import psnr
    from enhancer.training.evaluate import _rgb01, save_jpeg_opencv

    gains: dict = {}
    for kind, images in content.items():
        for q in qualities:
            for image in images:
                data = save_jpeg_opencv(image, q)
                damaged, clean = _rgb01(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)), _rgb01(image)
                own, base = quantization_vector(imaging.decode(data).info), psnr(damaged, clean)
                for f in factors:
                    gain = psnr(forward(damaged, scale_steps(own, f)), clean) - base
                    gains.setdefault(kind, {}).setdefault(str(q), {}).setdefault(str(f), []).append(float(gain))
        log.info("measured %s", kind)
    return gains


def choose(gains: dict, floor: float = WORST_FLOOR_DB) -> list[tuple[int, float]]:
    """Per quality, the factor with the best mean gain (the mean over kinds of each kind's mean)
    among those whose worst image keeps `floor`, or the factor with the best worst image when none
    does; then made non-increasing with quality, so a better file is never told larger steps."""
    qualities = sorted({int(q) for kind in gains.values() for q in kind})
    points = []
    for q in qualities:
        rows = {}
        for kind in gains.values():
            for f, values in kind[str(q)].items():
                rows.setdefault(float(f), []).append(values)
        mean = {f: float(np.mean([np.mean(v) for v in kinds])) for f, kinds in rows.items()}
        worst = {f: float(min(min(v) for v in kinds)) for f, kinds in rows.items()}
        safe = [f for f in rows if worst[f] >= floor]
        best = max(safe, key=lambda f: mean[f]) if safe else max(rows, key=lambda f: worst[f])
        points.append((q, min(best, points[-1][1]) if points else best))
    return points


def summary(gains: dict, points: list[tuple[int, float]]) -> dict:
    """Per kind and quality: mean and worst gain with the file's own steps and with the chosen factor."""
    chosen = dict(points)
    table: dict = {}
    for kind, by_quality in gains.items():
        for q, by_factor in by_quality.items():
            own, scaled = by_factor["1.0"], by_factor[str(chosen[int(q)])]
            table.setdefault(kind, {})[q] = {
                "factor": chosen[int(q)],
                "own_steps": {"mean": float(np.mean(own)), "worst": float(np.min(own))},
                "chosen": {"mean": float(np.mean(scaled)), "worst": float(np.min(scaled))},
            }
    return table


def calibrate(model_dir: Path, data_dir: Path, fonts_dir: Path, scans_dir: Path, about: dict | None = None) -> dict:
    """Measure, choose and record: `auto_step_scale` into the model's metadata.json, the evidence
    (with `about`: where and when) into its eval/step_calibration.json."""
    from enhancer.training.evaluate import ImageForward

    forward = ImageForward(model_dir)
    if not forward.conditioned:
        raise ValueError(f"{model_dir} is not told the file's quantisation tables: it has no steps to scale")
    gains = measure(forward, calibration_content(data_dir, fonts_dir, scans_dir))
    points = choose(gains)
    record = {"model": str(model_dir), **(about or {}), "worst_floor_db": WORST_FLOOR_DB, "auto_step_scale": points,
              "summary": summary(gains, points), "gain_db": gains}
    (model_dir / "eval").mkdir(exist_ok=True)
    (model_dir / "eval" / "step_calibration.json").write_text(json.dumps(record, indent=1) + "\n")
    record_auto_step_scale(model_dir, points)
    return record


def record_auto_step_scale(model_dir: Path, points) -> None:
    """Write `[quality, factor]` points into the model folder's metadata.json as `auto_step_scale`."""
    meta_path = Path(model_dir) / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    meta["auto_step_scale"] = [list(p) for p in points]
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
