"""Measure SavedModels on the test set: PSNR/SSIM gain over the JPEG per quality, per image and
per kind of image, mean and worst, against tuned NLM and the previous model, plus speed; writes a
Markdown report, a gain plot and crops of the best and the worst case.

Why whole test images of other kinds: crops of training-like photos flatter a model, and the gain
on a whole image (sky, edges, text together) is what a user sees; the worst image is what a user
complains about. A conditioned model is also measured blind (a PNG made from the same JPEG) and on
clean images (which must come back unchanged).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from enhancer.config import Settings
from enhancer.models.contract import QUANTIZATION_KEY, QUANTIZATION_LENGTH
from enhancer.training.dataset import jpeg, load_images, psnr

log = logging.getLogger(__name__)

QUALITIES = (5, 10, 20, 30, 50, 70, 75, 80, 85, 90, 95)
#: Speed is measured at the tile the server feeds the model on a CPU (the issue's "served tile size").
SERVED_CPU_TILE: int = Settings.model_fields["tile_size"].default
#: Non-local-means strength per JPEG quality, chosen on training photos (see `tune_nlm`).
NLM_STRENGTHS = (1, 2, 3, 5, 7, 10, 14)


def load_forward(model_dir: Path, settings: Settings | None = None):
    """The model folder's runner (the server's own, through the model contract), on the device the
    settings (default: the environment's) configure."""
    from enhancer.models.saved_model import SavedModelRunner, configure_device

    return SavedModelRunner(model_dir, device=configure_device(settings or Settings()))


class ImageForward:
    """A model on one RGB image [H, W, 3], told the file's tables when it takes them (`conditioned`)."""

    def __init__(self, model_dir: Path):
        self.runner = load_forward(model_dir)
        self.conditioned = QUANTIZATION_KEY in self.runner.spec.inputs

    def __call__(self, image: np.ndarray, quantization: np.ndarray | None) -> np.ndarray:
        return np.clip(self.images_only(image[None], None if quantization is None else quantization[None])[0], 0, 1)

    def images_only(self, images: np.ndarray, quantization: np.ndarray | None = None) -> np.ndarray:
        """A batch, with blind tables when none are given (the speed measurement)."""
        if not self.conditioned:
            return self.runner.forward(images)
        if quantization is None:
            quantization = np.zeros((len(images), QUANTIZATION_LENGTH), np.float32)
        return self.runner.forward(images, {QUANTIZATION_KEY: quantization})


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=-1, data_range=1.0))


def _rgb01(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def nlm(bgr: np.ndarray, strength: float) -> np.ndarray:
    """OpenCV's non-local means on a BGR uint8 image (the classical baseline)."""
    return cv2.fastNlMeansDenoisingColored(bgr, None, strength, strength, 7, 21)


def tune_nlm(images: list[np.ndarray], qualities=QUALITIES, crop: int = 256) -> dict[int, float]:
    """Best NLM strength per quality on centre crops of the given (training) photos, so the
    baseline is fair without being tuned on the photos it is scored on."""
    images = [im[(im.shape[0] - crop) // 2 :][:crop, (im.shape[1] - crop) // 2 :][:, :crop] for im in images]
    best: dict[int, float] = {}
    for q in qualities:
        scores = {}
        for h in NLM_STRENGTHS:
            scores[h] = np.mean([psnr(_rgb01(nlm(jpeg(im, q), h)), _rgb01(im)) for im in images])
        best[q] = float(max(scores, key=scores.get))
    return best


def measure_speed(forward, tile: int = SERVED_CPU_TILE, batch: int = 1, repeats: int = 5) -> float:
    """Megapixels per second of `forward` on [batch, tile, tile, 3] (after one warm-up call)."""
    x = np.random.default_rng(0).uniform(0, 1, (batch, tile, tile, 3)).astype(np.float32)
    forward(x)
    start = time.perf_counter()
    for _ in range(repeats):
        forward(x)
    return batch * tile * tile * repeats / (time.perf_counter() - start) / 1e6


def save_jpeg_opencv(image_bgr: np.ndarray, quality: int) -> bytes:
    """The test's JPEG: OpenCV at `quality` with its default 4:2:0, as a user's photo is saved."""
    ok, buffer = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return buffer.tobytes()


def file_quantization(data: bytes) -> np.ndarray:
    """The model's `quantization` input for a JPEG file, built exactly as the server builds it."""
    from enhancer import imaging
    from enhancer.conditioning import quantization_vector

    return quantization_vector(imaging.decode(data).info)


@dataclass
class Result:
    """One method's answer on one image at one quality (quality 0: the clean image, blind)."""

    image: str
    kind: str
    quality: int
    method: str
    psnr: float
    ssim: float
    psnr_input: float
    ssim_input: float

    @property
    def gain(self) -> float:
        return self.psnr - self.psnr_input


def _run_methods(forwards, strengths, image_bgr, quality):
    """Each method's RGB answer for one image at one quality (the JPEG, its tables, the clean)."""
    from enhancer import imaging
    from enhancer.conditioning import quantization_vector

    clean = _rgb01(image_bgr)
    data = save_jpeg_opencv(image_bgr, quality)
    damaged_bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    damaged = _rgb01(damaged_bgr)
    answers = {"nlm": _rgb01(nlm(damaged_bgr, strengths[quality]))}
    info = imaging.decode(data).info
    blind = np.zeros(QUANTIZATION_LENGTH, np.float32)
    for name, forward in forwards.items():
        if forward.conditioned:  # told the file's tables as the server tells this model
            answers[name] = forward(damaged, quantization_vector(info, spec=forward.runner.spec))
            answers[f"{name} (blind)"] = forward(damaged, blind)
        else:
            answers[name] = forward(damaged, None)
    return clean, damaged, answers


def evaluate(
    models: dict[str, Path],
    testset_dir: Path,
    out_dir: Path,
    train_dir: Path | None = None,
    qualities=QUALITIES,
    speed_tile: int = SERVED_CPU_TILE,
) -> dict:
    """Evaluate each SavedModel (name -> dir; the first is the one reported) on the test set
    against the JPEG and tuned NLM; write evaluation.json/.md, a gain plot and crops."""
    from enhancer.training.testset import load_testset

    out_dir.mkdir(parents=True, exist_ok=True)
    tests = load_testset(testset_dir)
    forwards = {name: ImageForward(path) for name, path in models.items()}
    strengths = tune_nlm(load_images(train_dir)[:2], qualities) if train_dir else dict.fromkeys(qualities, 5.0)
    results: list[Result] = []
    keep: dict[tuple[str, int, str], np.ndarray] = {}
    for name, kind, image in tests:
        for q in qualities:
            clean, damaged, answers = _run_methods(forwards, strengths, image, q)
            p_in, s_in = psnr(damaged, clean), ssim(damaged, clean)
            for method, answer in answers.items():
                results.append(Result(name, kind, q, method, psnr(answer, clean), ssim(answer, clean), p_in, s_in))
            if q in CROP_QUALITIES:
                keep.update({(name, q, m): a for m, a in answers.items()})
                keep[(name, q, "jpeg")], keep[(name, q, "original")] = damaged, clean
        clean = _rgb01(image)
        for method, forward in forwards.items():  # a clean, non-JPEG image: the blind path
            answer = forward(clean, np.zeros(QUANTIZATION_LENGTH, np.float32) if forward.conditioned else None)
            results.append(Result(name, kind, 0, method, psnr(answer, clean), ssim(answer, clean), float("inf"), 1.0))
        log.info("evaluated %s", name)
    first = next(iter(forwards))
    summary = summarise(results, [first, *[m for m in {r.method for r in results} if m != first]])
    result = {
        "test_images": {name: kind for name, kind, _ in tests},
        "nlm_strength": {str(q): s for q, s in strengths.items()},
        "speed_mp_per_s": {name: measure_speed(f.images_only, speed_tile) for name, f in forwards.items()},
        "load_average_at_speed": __import__("os").getloadavg()[0],  # speed is only comparable on an idle machine
        "speed_tile": speed_tile,
        "summary": summary,
        "results": [{**r.__dict__, "gain": r.gain} for r in results if r.quality],
        "clean": {r.image: r.psnr for r in results if not r.quality and r.method == first},
        "suggested_pass_through_quality": suggested_pass_through(
            {int(q): d["mean_gain"] for q, d in summary[first]["qualities"].items()}
        ),
    }
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "evaluation.md").write_text(markdown_report(result, first))
    plot_gains(summary, out_dir / "gain_vs_quality.png")
    save_crops(keep, results, first, out_dir / "crops.png")
    return result


def suggested_pass_through(gains: dict[int, float]) -> int:
    """The lowest quality from which the model's mean gain is negative at every measured quality
    up: JPEGs at or above it are better answered unchanged (ENHANCER_PASS_THROUGH_JPEG_QUALITY;
    101 when the gain never turns negative)."""
    threshold = 101
    for q in sorted(gains, reverse=True):
        if gains[q] >= 0:
            break
        threshold = q
    return threshold


#: Qualities whose answers are kept for the crops figure.
CROP_QUALITIES = (10, 90)


def summarise(results: list[Result], methods: list[str]) -> dict:
    """Per method and quality: mean gain, the worst image and its gain, mean SSIM, per-kind means."""
    summary: dict = {}
    for method in methods:
        per_q = {}
        for q in sorted({r.quality for r in results if r.quality}):
            rows = [r for r in results if r.method == method and r.quality == q]
            if not rows:
                continue
            worst = min(rows, key=lambda r: r.gain)
            kinds = sorted({r.kind for r in rows})
            per_q[str(q)] = {
                "mean_gain": float(np.mean([r.gain for r in rows])),
                "worst_gain": worst.gain,
                "worst_image": worst.image,
                "ssim_input": float(np.mean([r.ssim_input for r in rows])),
                "ssim": float(np.mean([r.ssim for r in rows])),
                "kinds": {k: float(np.mean([r.gain for r in rows if r.kind == k])) for k in kinds},
            }
        clean = [r.psnr for r in results if r.method == method and not r.quality]
        summary[method] = {"qualities": per_q, "clean_min_psnr": float(min(clean)) if clean else None}
    return summary


def markdown_report(result: dict, model: str) -> str:
    """Mean and worst gain per quality for every method, the reported model per kind, per image."""
    summary = result["summary"]
    qualities = list(summary[model]["qualities"])
    lines = ["Gain in PSNR (dB, RGB, whole image) over the JPEG input, mean over the test images / worst image:", "",
             "| method | " + " | ".join(f"q{q}" for q in qualities) + " |", "|---" * (len(qualities) + 1) + "|"]  # fmt: skip
    for method, data in summary.items():
        cells = [f"{data['qualities'][q]['mean_gain']:+.2f} / {data['qualities'][q]['worst_gain']:+.2f}" for q in qualities]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", f"Worst image per quality for `{model}`: " + ", ".join(
        f"q{q} {summary[model]['qualities'][q]['worst_image']} ({summary[model]['qualities'][q]['worst_gain']:+.2f})" for q in qualities) + ".",  # fmt: skip
        "", f"SSIM, JPEG input -> `{model}`: " + ", ".join(
        f"q{q} {summary[model]['qualities'][q]['ssim_input']:.3f} -> {summary[model]['qualities'][q]['ssim']:.3f}" for q in qualities) + ".",  # fmt: skip
        "", f"`{model}` per kind of image (mean gain, dB):", ""]  # fmt: skip
    kinds = sorted(summary[model]["qualities"][qualities[0]]["kinds"])
    lines += ["| kind | " + " | ".join(f"q{q}" for q in qualities) + " |", "|---" * (len(qualities) + 1) + "|"]
    for kind in kinds:
        lines.append(f"| {kind} | " + " | ".join(f"{summary[model]['qualities'][q]['kinds'][kind]:+.2f}" for q in qualities) + " |")
    lines += ["", f"`{model}` per image (gain, dB):", "",
              "| image | kind | " + " | ".join(f"q{q}" for q in qualities) + " |", "|---" * (len(qualities) + 2) + "|"]  # fmt: skip
    by_image: dict[str, dict[int, float]] = {}
    for r in result["results"]:
        if r["method"] == model:
            by_image.setdefault(r["image"], {})[r["quality"]] = r["gain"]
    for image, gains in sorted(by_image.items()):
        kind = result["test_images"][image]
        lines.append(f"| {image} | {kind} | " + " | ".join(f"{gains[int(q)]:+.2f}" for q in qualities) + " |")
    clean = result["clean"]
    lines += ["", f"Clean images (no JPEG, the blind path) through `{model}`: PSNR against themselves "
              f"min {min(clean.values()):.1f} dB, mean {np.mean(list(clean.values())):.1f} dB.", ""]  # fmt: skip
    return "\n".join(lines)


def plot_gains(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for method, data in summary.items():
        qs = [int(q) for q in data["qualities"]]
        line = ax.plot(qs, [d["mean_gain"] for d in data["qualities"].values()], marker="o", label=f"{method} mean")
        ax.plot(qs, [d["worst_gain"] for d in data["qualities"].values()], ls=":", color=line[0].get_color(), label=f"{method} worst")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("JPEG quality")
    ax.set_ylabel("PSNR gain over the JPEG (dB)")
    ax.set_title("Test set: mean and worst image")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_crops(keep, results: list[Result], model: str, path: Path, size: int = 128, zoom: int = 2) -> None:
    """JPEG | model | original crops of the best and the worst image at quality 10 and 90."""
    rows = []
    for q in CROP_QUALITIES:
        ranked = sorted((r for r in results if r.method == model and r.quality == q), key=lambda r: r.gain)
        for r in (ranked[-1], ranked[0]):
            clean = keep[(r.image, q, "original")]
            y, x, s = busiest_window(clean, size)
            crops = [keep[(r.image, q, k)][y : y + s, x : x + s] for k in ("jpeg", model, "original")]
            caption = f"q{q} {'best' if r is ranked[-1] else 'worst'}: {r.image} {r.gain:+.2f} dB"
            rows += crop_row(crops, caption, size, zoom)
    write_crop_grid(rows, path)


def busiest_window(rgb: np.ndarray, size: int) -> tuple[int, int, int]:
    """(y, x, side) of the side x side window (side = `size`, or less on a smaller image) with the
    most detail (summed |Laplacian| of grey): where a method's differences show."""
    h, w = rgb.shape[:2]
    s = min(size, h, w)
    gray = cv2.cvtColor(np.asarray(rgb, np.float32), cv2.COLOR_RGB2GRAY)
    energy = cv2.boxFilter(np.abs(cv2.Laplacian(gray, cv2.CV_32F)), -1, (s, s))
    y, x = np.unravel_index(np.argmax(energy[s // 2 : h - s // 2 + 1, s // 2 : w - s // 2 + 1]), (h - s + 1, w - s + 1))
    return int(y), int(x), s


def crop_row(crops: list[np.ndarray], caption: str, size: int, zoom: int) -> list[np.ndarray]:
    """A caption bar and the crops (RGB in [0, 1]) side by side, each shown at `size` then zoomed
    `zoom` times, nearest neighbour (pixels stay pixels); two float RGB rows for `write_crop_grid`."""
    tiles = [cv2.resize(np.asarray(c, np.float32), (size, size), interpolation=cv2.INTER_NEAREST) for c in crops]
    row = np.hstack([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=1) for t in tiles])
    row = cv2.resize(row, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    label = np.full((24, row.shape[1], 3), 255, np.uint8)
    cv2.putText(label, caption, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    return [label.astype(np.float32) / 255, row]


def write_crop_grid(rows: list[np.ndarray], path: Path) -> None:
    """Stack `crop_row`s (all the same width) into one PNG."""
    grid = (np.clip(np.vstack(rows), 0, 1) * 255).round().astype(np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))

def budget_comparison(runs: list[Path]) -> str:
    """Validation gains of several runs at the same training wall time, read from their log.csv.

    The budget is the shortest run's duration; each run is reported at its last epoch within it,
    and at its end.
    """
    import csv

    import tensorflow as tf

    from enhancer.training import network

    logs = {run: list(csv.DictReader((run / "log.csv").open())) for run in runs}
    budget = min(float(rows[-1]["elapsed_s"]) for rows in logs.values())
    lines = [
        f"Validation PSNR gain (dB, centre crops of the held-out photos) at an equal budget of "
        f"{budget / 60:.1f} minutes of training on this machine, and at the end of each run; speed of "
        f"the architecture on one {SERVED_CPU_TILE}x{SERVED_CPU_TILE} tile:",
        "",
        "| run | architecture | loss | at | step | minutes | q10 | q30 | q90 | MP/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run, rows in logs.items():
        recipe = json.loads((run / "config.json").read_text())
        model = network.build(recipe["architecture"])
        speed = measure_speed(tf.function(lambda x, m=model: m(x, training=False)), repeats=2)
        within = [r for r in rows if float(r["elapsed_s"]) <= budget + 1] or rows[:1]
        for label, r in (("equal budget", within[-1]), ("end of run", rows[-1])):
            lines.append(
                f"| `{run.name}` | {recipe['architecture']} | {recipe.get('loss', 'mse')} | {label} | {r['step']} | "
                f"{float(r['elapsed_s']) / 60:.1f} | {float(r['gain_q10']):+.2f} | {float(r['gain_q30']):+.2f} | "
                f"{float(r['gain_q90']):+.2f} | {speed:.2f} |"
            )
    return "\n".join(lines) + "\n"


#: Qualities the pass-through decision looks at (validation only, see `high_quality_validation`).
PASS_THROUGH_QUALITIES = (85, 90, 92, 95, 98)


def high_quality_validation(model_dir: Path, data_dir: Path, fonts_dir: Path, crop: int = 512,
                            scans_dir: Path | None = None) -> dict:
    """Gain (dB) of a conditioned model on the validation set's good files, per kind and quality:
    the evidence for where the server's pass-through starts. Validation, never the test set, chooses.

    Kinds: the held-out photos, rendered screens, the photos in grey saved as colour JPEGs, the
    photos with grain, simulated scans (the `extended` validation of training mix 2), and the held-out
    real scans of `scans_dir`/val where that folder exists (mix 3's validation); OpenCV's 4:2:0
    JPEG at each quality, told its tables as the server tells them (the model's auto_step_scale).
    Reported per kind: the mean and the worst image.
    """
    from enhancer.conditioning import scale_steps
    from enhancer.training import jpeg_damage, synthetic
    from enhancer.training.train import validation_content

    pages = load_images(scans_dir / "val") if scans_dir is not None and (scans_dir / "val").is_dir() else []
    kinds = validation_content(load_images(data_dir / "val"), synthetic.list_fonts(fonts_dir), crop, extended=True, pages=pages)
    forward = ImageForward(model_dir)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for kind, images in kinds.items():
        for q in PASS_THROUGH_QUALITIES:
            recipe = jpeg_damage.ijg_recipe(q)
            gains = []
            for image in images:
                damaged = _rgb01(jpeg_damage.jpeg_round_trip(image, recipe))
                clean = _rgb01(image)
                told = scale_steps(recipe.condition(), forward.runner.spec.step_factor(q))  # as served
                gains.append(psnr(forward(damaged, told), clean) - psnr(damaged, clean))
            table.setdefault(kind, {})[f"q{q}"] = {"mean": float(np.mean(gains)), "worst": float(np.min(gains))}
    return {"model": str(model_dir), "qualities": list(PASS_THROUGH_QUALITIES), "gain_db": table}
