"""Measure an upscaler (a SavedModel whose metadata declares scale 2 or 4) on the test set
against bicubic, Lanczos and "restore at 1x, then bicubic": `enhancer evaluate --scale 2`.

How each test image is used: the full-size image, cropped so its sides are multiples of the scale,
is the ground truth. Its small version is made as small web images are made, with Pillow's
(antialiased) bicubic, and reaches every method as a file:

* `clean`: saved as PNG. The model is told nothing (the all-zero, blind condition), as the server
  tells it for any file that is not a JPEG;
* `q75`, `q50`: saved by OpenCV at that quality (4:2:0), the model told the file's own tables.

The model and the 1x restorer run exactly as the server runs them: the file's bytes go through the
server's `Pipeline.prepare` (decode with `enhancer.imaging`, the extra inputs from
`conditioning.quantization_vector` on the decoded ImageInfo, the tiler with the server's tile size
and overlap; a small image is one tile), the tiles through the SavedModel runner, and the answer
is stitched at output resolution. JPEG pass-through is off (the qualities here are below it anyway).

Methods (all answers rounded to 8 bits, as the encoded answer a user gets):

* `model`: the upscaler;
* `bicubic`: OpenCV INTER_CUBIC on the decoded small image (the baseline every gain is over);
* `lanczos`: OpenCV INTER_LANCZOS4 on it;
* `restore+bicubic`: the served 1x restorer (weights/dejpeg-q) on the small file, its answer
  rounded to 8 bits, then INTER_CUBIC.

Metrics, as the super-resolution literature reports them: PSNR and SSIM on the luma Y of BT.601
(MATLAB's rgb2ycbcr: Y = 16 + 65.481 R + 128.553 G + 24.966 B for RGB in [0, 1]), with `scale`
pixels cropped at each border; SSIM with Wang et al.'s 11x11 Gaussian window (sigma 1.5).
Per image, per kind, mean and worst image; the gain of each method over bicubic on the same input.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from enhancer.training.evaluate import busiest_window, crop_row, load_forward, save_jpeg_opencv, write_crop_grid

log = logging.getLogger(__name__)

#: Small inputs: label -> JPEG quality (None: a PNG, the blind path).
VARIANTS: dict[str, int | None] = {"clean": None, "q75": 75, "q50": 50}
METHODS = ("model", "bicubic", "lanczos", "restore+bicubic")
BASELINE = "bicubic"
#: The issue's targets: mean Y-PSNR gain over bicubic (dB) per scale and input, and no image below bicubic.
TARGETS: dict[int, dict[str, float]] = {2: {"clean": 2.0, "q75": 1.0, "q50": 1.0}, 4: {"clean": 1.2}}
#: Side of the crops (in output pixels) and their zoom in crops.png.
CROP_SIZE, CROP_ZOOM = 96, 2


# --- metrics ---------------------------------------------------------------------------------------
def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma in [16, 235] (MATLAB's rgb2ycbcr) of RGB in [0, 1], float64."""
    rgb = np.asarray(rgb, np.float64)
    return 16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]


def _shave(y: np.ndarray, border: int) -> np.ndarray:
    return y[border : y.shape[0] - border, border : y.shape[1] - border] if border else y


def y_psnr(a: np.ndarray, b: np.ndarray, border: int) -> float:
    """PSNR (dB, peak 255) between the lumas of two RGB images in [0, 1], `border` pixels cropped
    at each edge."""
    diff = _shave(luma(a), border) - _shave(luma(b), border)
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def y_ssim(a: np.ndarray, b: np.ndarray, border: int) -> float:
    """SSIM between the lumas (Gaussian window, sigma 1.5, data range 255), `border` cropped."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(_shave(luma(a), border), _shave(luma(b), border), data_range=255.0,
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False))  # fmt: skip


# --- inputs and methods ----------------------------------------------------------------------------
def to_8bit(rgb: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and round to 8 bits (what the encoder writes), back as float32 in [0, 1]."""
    return np.floor(np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.float32) / 255.0


def ground_truth(image_bgr: np.ndarray, scale: int) -> np.ndarray:
    """The test image cropped (bottom and right) so both sides are multiples of `scale`."""
    h, w = image_bgr.shape[:2]
    return np.ascontiguousarray(image_bgr[: h // scale * scale, : w // scale * scale])


def small_file(truth_bgr: np.ndarray, scale: int, quality: int | None) -> bytes:
    """The small input as a file: Pillow bicubic (antialiased) downscale, saved as PNG (`quality`
    None) or by OpenCV as a JPEG at `quality`."""
    from enhancer.training.upscale_data import downscale

    small = downscale(truth_bgr, scale, "pil_bicubic")
    if quality is not None:
        return save_jpeg_opencv(small, quality)
    ok, buffer = cv2.imencode(".png", small)
    if not ok:
        raise RuntimeError("OpenCV failed to encode a PNG")
    return buffer.tobytes()


def enlarge(rgb: np.ndarray, scale: int, interpolation: int) -> np.ndarray:
    """`rgb` (float, [0, 1]) enlarged `scale` times with an OpenCV interpolation, rounded to 8 bits."""
    h, w = rgb.shape[:2]
    return to_8bit(cv2.resize(np.asarray(rgb, np.float32), (w * scale, h * scale), interpolation=interpolation))


class ServedModel:
    """A model folder run on image files as the server runs it: its runner (`load_forward`), the
    server's pipeline (decode, extra inputs from the file, tiles) and stitching at output size."""

    def __init__(self, model_dir: Path, settings=None):
        from enhancer.config import Settings
        from enhancer.pipeline import DirectTiles, Pipeline

        settings = settings or Settings()
        self.runner = load_forward(Path(model_dir), settings)
        self.spec = self.runner.spec
        # the tile settings the server would use for this model on this device
        settings = settings.for_device(self.runner.device_kind)
        self.tile_size, self.tile_overlap = settings.tiling_for(self.spec)
        self.pipeline = Pipeline(tile_size=self.tile_size, tile_overlap=self.tile_overlap, pass_through_jpeg_quality=101)
        self.tiles = DirectTiles({self.spec.name: self.runner}, settings.max_batch_size)
        self.seconds = 0.0  #: time spent in __call__ (decode, tiles, model, stitch)

    def __call__(self, data: bytes) -> np.ndarray:
        """The model's answer to an image file: float32 RGB [H * scale, W * scale, 3], rounded to 8 bits."""
        from enhancer import tiling

        started = time.perf_counter()
        prepared = self.pipeline.prepare(data, self.spec)
        outputs = self.tiles(prepared.take_job())
        answer = to_8bit(tiling.stitch(outputs, prepared.plan, scale=self.spec.scale))
        self.seconds += time.perf_counter() - started
        return answer


def run_methods(data: bytes, scale: int, model: ServedModel, restorer: ServedModel) -> dict[str, np.ndarray]:
    """Every method's answer (RGB float32 in [0, 1], 8-bit values) to one small image file."""
    from enhancer import imaging
    from enhancer.samples import to_unit_float

    small = to_unit_float(imaging.decode(data).pixels)  # the pixels the server decodes, for the interpolations
    return {
        "model": model(data),
        "bicubic": enlarge(small, scale, cv2.INTER_CUBIC),
        "lanczos": enlarge(small, scale, cv2.INTER_LANCZOS4),
        "restore+bicubic": enlarge(restorer(data), scale, cv2.INTER_CUBIC),
    }


# --- the evaluation --------------------------------------------------------------------------------
@dataclass
class Result:
    """One method's answer to one image's small input (one variant)."""

    image: str
    kind: str
    variant: str
    method: str
    psnr_y: float
    ssim_y: float
    gain: float = 0.0  #: psnr_y minus bicubic's on the same input
    ssim_gain: float = 0.0  #: ssim_y minus bicubic's


def evaluate_upscale(
    model_dir: Path,
    restorer_dir: Path,
    testset_dir: Path,
    out_dir: Path,
    scale: int | None = None,
    variants: dict[str, int | None] = VARIANTS,
    settings=None,
) -> dict:
    """Evaluate the upscaler in `model_dir` on the test set; write evaluation.json, evaluation.md
    and crops.png into `out_dir`; return what the JSON holds. `scale`, when given, must be the
    model's (its metadata's)."""
    from enhancer.training.testset import load_testset

    from enhancer.models.contract import read_spec

    started = time.perf_counter()
    declared = read_spec(Path(model_dir)).scale  # checked before anything loads
    if scale is not None and declared != scale:
        raise ValueError(f"{model_dir} enlarges {declared} times (its metadata.json), not {scale}")
    if declared < 2:
        raise ValueError(f"{model_dir} is not an upscaler (scale {declared}); evaluate it without --scale")
    if read_spec(Path(restorer_dir)).scale != 1:
        raise ValueError(f"the restorer {restorer_dir} must keep the size (scale 1)")
    scale = declared
    model, restorer = ServedModel(model_dir, settings), ServedModel(restorer_dir, settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    tests = load_testset(testset_dir)
    results: list[Result] = []
    crops: dict[tuple[str, str, str], np.ndarray] = {}
    sizes: dict[str, list[int]] = {}
    for name, kind, image in tests:
        truth_bgr = ground_truth(image, scale)
        truth = cv2.cvtColor(truth_bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        sizes[name] = list(truth.shape[:2])
        y, x, s = busiest_window(truth, CROP_SIZE)
        crops[(name, "", "ground truth")] = truth[y : y + s, x : x + s]
        for variant, quality in variants.items():
            answers = run_methods(small_file(truth_bgr, scale, quality), scale, model, restorer)
            rows = {m: Result(name, kind, variant, m, y_psnr(a, truth, scale), y_ssim(a, truth, scale)) for m, a in answers.items()}
            for r in rows.values():
                r.gain, r.ssim_gain = r.psnr_y - rows[BASELINE].psnr_y, r.ssim_y - rows[BASELINE].ssim_y
            results += rows.values()
            crops.update({(name, variant, m): a[y : y + s, x : x + s] for m, a in answers.items()})
        gains = ", ".join(f"{r.variant} {r.gain:+.2f}" for r in results if r.image == name and r.method == "model")
        log.info("evaluated %s: model over bicubic %s dB", name, gains)
    summary = summarise(results, list(variants))
    result = {
        "scale": scale,
        "model": model.spec.name,
        "model_dir": str(model_dir),
        "restorer": restorer.spec.name,
        "restorer_dir": str(restorer_dir),
        "downscale": "Pillow bicubic (antialiased), sides of the ground truth cropped to multiples of the scale",
        "variants": {v: "PNG, model told nothing (blind)" if q is None else f"OpenCV JPEG q{q} 4:2:0, model told the file's tables"
                     for v, q in variants.items()},  # fmt: skip
        "methods": {
            "model": f"{model.spec.name} through the server's pipeline (tile {model.tile_size}, overlap {model.tile_overlap} input px)",
            "bicubic": "OpenCV INTER_CUBIC on the decoded small image",
            "lanczos": "OpenCV INTER_LANCZOS4 on the decoded small image",
            "restore+bicubic": f"{restorer.spec.name} at 1x on the small file, rounded to 8 bits, then INTER_CUBIC",
        },
        "metric": f"BT.601 luma (rgb2ycbcr), {scale} px cropped at each border; answers rounded to 8 bits; "
                  "SSIM with an 11x11 Gaussian window (sigma 1.5)",  # fmt: skip
        "test_images": {name: kind for name, kind, _ in tests},
        "sizes": sizes,
        "summary": summary,
        "targets": check_targets(summary, scale),
        "results": [r.__dict__ for r in results],
        "model_seconds": model.seconds,
        "seconds": time.perf_counter() - started,
        "load_average": os.getloadavg()[0],
    }
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "evaluation.md").write_text(markdown_report(result))
    save_crops(crops, results, out_dir / "crops.png", scale)
    return result


def summarise(results: list[Result], variants: list[str]) -> dict:
    """Per input and method: mean Y-PSNR/SSIM, mean and worst gain over bicubic (and which image),
    how many images fall below bicubic, the mean gain per kind."""
    summary: dict = {}
    for variant in variants:
        summary[variant] = {}
        for method in METHODS:
            rows = [r for r in results if r.variant == variant and r.method == method]
            worst, best = min(rows, key=lambda r: r.gain), max(rows, key=lambda r: r.gain)
            summary[variant][method] = {
                "mean_psnr_y": float(np.mean([r.psnr_y for r in rows])),
                "mean_ssim_y": float(np.mean([r.ssim_y for r in rows])),
                "mean_gain": float(np.mean([r.gain for r in rows])),
                "mean_ssim_gain": float(np.mean([r.ssim_gain for r in rows])),
                "worst_gain": worst.gain,
                "worst_image": worst.image,
                "best_gain": best.gain,
                "best_image": best.image,
                "images_below_bicubic": int(sum(r.gain < 0 for r in rows)),
                "kinds": {k: float(np.mean([r.gain for r in rows if r.kind == k])) for k in sorted({r.kind for r in rows})},
            }
    return summary


def check_targets(summary: dict, scale: int) -> dict:
    """The issue's targets for this scale, against the model's figures on this test set."""
    checks = {}
    for variant, target in TARGETS.get(scale, {}).items():
        if variant in summary:
            row = summary[variant]["model"]
            checks[variant] = {
                "target_mean_gain": target,
                "mean_gain": row["mean_gain"],
                "worst_gain": row["worst_gain"],
                "met": bool(row["mean_gain"] >= target and row["worst_gain"] >= 0),
            }
    return checks


def markdown_report(result: dict) -> str:
    """The table (rows: input x method), the model per kind and per image, and the targets."""
    scale, summary = result["scale"], result["summary"]
    variants = list(summary)
    lines = [
        f"x{scale} on {len(result['test_images'])} test images: Y-PSNR (BT.601 luma, {scale} px cropped at each border) "
        "of each method's answer against the full-size image, and its gain over bicubic (OpenCV) on the same small "
        "input: mean over the images, and the worst image. Small inputs: Pillow bicubic downscale, saved as PNG "
        "(`clean`, the model told nothing) or by OpenCV as JPEG (`q75`, `q50`, the model told the file's tables).",
        "",
        "| input | method | Y-PSNR (dB) | gain over bicubic (dB) | worst image (gain) | SSIM-Y | SSIM-Y gain | images below bicubic |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant in variants:
        for method, row in summary[variant].items():
            name = f"`{result['model']}`" if method == "model" else method.replace("restore+", f"{result['restorer']} + ")
            worst = "(the reference)" if method == BASELINE else f"{row['worst_image']} ({row['worst_gain']:+.2f})"
            lines.append(
                f"| {variant} | {name} | {row['mean_psnr_y']:.2f} | {row['mean_gain']:+.2f} | {worst} | "
                f"{row['mean_ssim_y']:.4f} | {row['mean_ssim_gain']:+.4f} | {row['images_below_bicubic']} of "
                f"{len(result['test_images'])} |"
            )
    kinds = list(summary[variants[0]]["model"]["kinds"])
    lines += ["", f"`{result['model']}` per kind of image (mean gain over bicubic, dB):", "",
              "| kind | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]  # fmt: skip
    for kind in kinds:
        lines.append(f"| {kind} | " + " | ".join(f"{summary[v]['model']['kinds'][kind]:+.2f}" for v in variants) + " |")
    by_image: dict[str, dict[str, dict]] = {}
    for r in result["results"]:
        by_image.setdefault(r["image"], {}).setdefault(r["variant"], {})[r["method"]] = r
    lines += ["", f"Per image: bicubic's Y-PSNR and the gain of `{result['model']}` / of {result['restorer']} + bicubic (dB):", "",
              "| image | kind | " + " | ".join(f"{v} bicubic | {v} gain" for v in variants) + " |",
              "|---" * (2 * len(variants) + 2) + "|"]  # fmt: skip
    for image, rows in sorted(by_image.items()):
        cells = [f"{rows[v]['bicubic']['psnr_y']:.2f} | {rows[v]['model']['gain']:+.2f} / {rows[v]['restore+bicubic']['gain']:+.2f}"
                 for v in variants]  # fmt: skip
        lines.append(f"| {image} | {result['test_images'][image]} | " + " | ".join(cells) + " |")
    if result["targets"]:
        lines += ["", "Targets (mean gain over bicubic, and no image below it):"]
        for variant, t in result["targets"].items():
            lines.append(f"- {variant}: >= {t['target_mean_gain']:+.1f} dB: mean {t['mean_gain']:+.2f}, worst "
                         f"{t['worst_gain']:+.2f}: {'met' if t['met'] else 'not met'}")  # fmt: skip
    return "\n".join(lines) + "\n"


def save_crops(crops: dict, results: list[Result], path: Path, scale: int) -> None:
    """Bicubic | model | ground truth on three images: the model's best and worst clean input and
    its worst JPEG (the most damaged) input; at most one row per image where there are enough."""
    rows, used = [], set()
    choices = [("clean", max), ("clean", min), (list(dict.fromkeys(r.variant for r in results))[-1], min)]
    for variant, pick in choices:
        candidates = [r for r in results if r.variant == variant and r.method == "model"]
        fresh = [r for r in candidates if r.image not in used] or candidates
        if not fresh:
            continue
        r = pick(fresh, key=lambda r: r.gain)
        used.add(r.image)
        caption = f"x{scale} {variant} {r.image}: model {r.gain:+.2f} dB"
        rows += crop_row([crops[(r.image, variant, "bicubic")], crops[(r.image, variant, "model")],
                          crops[(r.image, "", "ground truth")]], caption, CROP_SIZE, CROP_ZOOM)  # fmt: skip
    write_crop_grid(rows, path)
