"""Measure a SavedModel on held-out photos: PSNR/SSIM gain over the JPEG per quality, against a
classical baseline, plus speed; writes a Markdown table, a gain plot and side-by-side crops.

Why whole held-out photos: crops of training images would flatter the model, and the gain on a
whole photo (sky, edges, texture together) is what a user sees.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from enhancer.config import Settings
from enhancer.training.dataset import jpeg, load_images, psnr

log = logging.getLogger(__name__)

QUALITIES = (5, 10, 20, 30, 50, 70, 90)
#: Qualities where a blind model's gain can turn negative: they set the server's pass-through.
HIGH_QUALITIES = (70, 75, 80, 85, 88, 90, 92, 95)
#: Speed is measured at the tile the server feeds the model on a CPU (the issue's "served tile size").
SERVED_CPU_TILE: int = Settings.model_fields["tile_size"].default
#: Non-local-means strength per JPEG quality, chosen on training photos (see `tune_nlm`).
NLM_STRENGTHS = (1, 2, 3, 5, 7, 10, 14)


def load_forward(model_dir: Path, settings: Settings | None = None):
    """The model folder's `forward` [N,H,W,3] -> [N,H,W,3], through the server's own runner (the
    model contract), on the device the settings (default: the environment's) configure."""
    from enhancer.models.saved_model import SavedModelRunner, configure_device

    return SavedModelRunner(model_dir, device=configure_device(settings or Settings())).forward


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


@dataclass
class Row:
    quality: int
    psnr_jpeg: float
    ssim_jpeg: float
    psnr: dict[str, float] = field(default_factory=dict)
    ssim: dict[str, float] = field(default_factory=dict)


def measure_speed(forward, tile: int = SERVED_CPU_TILE, batch: int = 1, repeats: int = 5) -> float:
    """Megapixels per second of `forward` on [batch, tile, tile, 3] (after one warm-up call)."""
    x = np.random.default_rng(0).uniform(0, 1, (batch, tile, tile, 3)).astype(np.float32)
    forward(x)
    start = time.perf_counter()
    for _ in range(repeats):
        forward(x)
    return batch * tile * tile * repeats / (time.perf_counter() - start) / 1e6


def evaluate(
    models: dict[str, Path],
    val_dir: Path,
    out_dir: Path,
    train_dir: Path | None = None,
    qualities=QUALITIES,
    speed_tile: int = SERVED_CPU_TILE,
) -> dict:
    """Evaluate each SavedModel in `models` (name -> dir) and the NLM baseline; write artifacts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images = load_images(val_dir)
    names = sorted(p.stem for p in Path(val_dir).iterdir() if p.suffix == ".png")
    forwards = {name: load_forward(path) for name, path in models.items()}
    strengths = tune_nlm(load_images(train_dir)[:2], qualities) if train_dir else dict.fromkeys(qualities, 5.0)

    rows: list[Row] = []
    outputs: dict[tuple[str, int, int], np.ndarray] = {}
    for q in qualities:
        acc: dict[str, list[tuple[float, float]]] = {"jpeg": [], "nlm": [], **{m: [] for m in forwards}}
        for i, image in enumerate(images):
            clean = _rgb01(image)
            damaged_bgr = jpeg(image, q)
            damaged = _rgb01(damaged_bgr)
            acc["jpeg"].append((psnr(damaged, clean), ssim(damaged, clean)))
            baseline = _rgb01(nlm(damaged_bgr, strengths[q]))
            acc["nlm"].append((psnr(baseline, clean), ssim(baseline, clean)))
            for name, forward in forwards.items():
                restored = np.clip(forward(damaged[None])[0], 0, 1)
                acc[name].append((psnr(restored, clean), ssim(restored, clean)))
                outputs[(name, q, i)] = restored
            outputs[("jpeg", q, i)] = damaged
            outputs[("original", q, i)] = clean
        mean = {k: tuple(np.mean(v, axis=0)) for k, v in acc.items()}
        row = Row(q, *mean["jpeg"])
        for k in ["nlm", *forwards]:
            row.psnr[k], row.ssim[k] = mean[k]
        rows.append(row)
        log.info("q%d: jpeg %.2f dB, %s", q, row.psnr_jpeg,
                 ", ".join(f"{k} {v - row.psnr_jpeg:+.2f} dB" for k, v in row.psnr.items()))  # fmt: skip

    first = next(iter(forwards))
    high = high_quality_gains(forwards[first], images)
    speeds = {name: measure_speed(f, speed_tile) for name, f in forwards.items()}
    result = {
        "val_images": names,
        "nlm_strength": {str(q): s for q, s in strengths.items()},
        "speed_mp_per_s": speeds,
        "speed_tile": speed_tile,
        "rows": [row.__dict__ for row in rows],
        "high_quality_gains": {str(q): g for q, g in high.items()},
        "suggested_pass_through_quality": suggested_pass_through(high),
    }
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "evaluation.md").write_text(markdown_table(rows, list(forwards)))
    plot_gains(rows, list(forwards), out_dir / "gain_vs_quality.png")
    save_crops(outputs, first, images, out_dir / "crops.png")
    return result


def high_quality_gains(forward, images: list[np.ndarray], qualities=HIGH_QUALITIES) -> dict[int, float]:
    """Mean PSNR gain (dB) of the model over the JPEG on whole held-out photos at high qualities."""
    gains = {}
    for q in qualities:
        per_image = []
        for image in images:
            clean, damaged = _rgb01(image), _rgb01(jpeg(image, q))
            restored = np.clip(forward(damaged[None])[0], 0, 1)
            per_image.append(psnr(restored, clean) - psnr(damaged, clean))
        gains[q] = float(np.mean(per_image))
    return gains


def suggested_pass_through(gains: dict[int, float]) -> int:
    """The lowest quality from which the model's gain is negative at every measured quality up:
    JPEGs at or above it are better answered unchanged (ENHANCER_PASS_THROUGH_JPEG_QUALITY)."""
    threshold = 101
    for q in sorted(gains, reverse=True):
        if gains[q] >= 0:
            break
        threshold = q
    return threshold


def markdown_table(rows: list[Row], models: list[str]) -> str:
    """PSNR (dB) / SSIM per quality: JPEG input, NLM baseline, each model, with gains."""
    cols = ["nlm", *models]
    head = "| JPEG quality | JPEG input | " + " | ".join(f"{c} | gain" for c in cols) + " |"
    sep = "|---" * (2 + 2 * len(cols)) + "|"
    lines = [head, sep]
    for r in rows:
        cells = [f"{r.quality}", f"{r.psnr_jpeg:.2f} / {r.ssim_jpeg:.4f}"]
        for c in cols:
            cells += [f"{r.psnr[c]:.2f} / {r.ssim[c]:.4f}", f"{r.psnr[c] - r.psnr_jpeg:+.2f} dB"]
        lines.append("| " + " | ".join(cells) + " |")
    return "PSNR (dB, RGB, whole image) / SSIM\n\n" + "\n".join(lines) + "\n"


def plot_gains(rows: list[Row], models: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    qs = [r.quality for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name in ["nlm", *models]:
        ax.plot(qs, [r.psnr[name] - r.psnr_jpeg for r in rows], marker="o", label=name)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("JPEG quality")
    ax.set_ylabel("PSNR gain over the JPEG (dB)")
    ax.set_title("Held-out photos, RGB PSNR")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_crops(outputs, model: str, images, path: Path, size: int = 128, zoom: int = 3) -> None:
    """Rows of JPEG | enhanced | original crops (nearest-neighbour zoom) at q10 and q30."""
    rows = []
    for q in (10, 30):
        for i in range(min(2, len(images))):
            clean = outputs[("original", q, i)]
            h, w = clean.shape[:2]
            # The most detailed window: highest gradient energy on a coarse grid.
            gray = cv2.cvtColor(clean, cv2.COLOR_RGB2GRAY)
            energy = cv2.boxFilter(np.abs(cv2.Laplacian(gray, cv2.CV_32F)), -1, (size, size))
            y, x = np.unravel_index(np.argmax(energy[size // 2 : h - size // 2, size // 2 : w - size // 2]), (h - size, w - size))
            window = (slice(y, y + size), slice(x, x + size))
            tiles = [outputs[(k, q, i)][window] for k in ("jpeg", model, "original")]
            row = np.hstack([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=1) for t in tiles])
            rows.append(cv2.resize(row, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST))
    grid = (np.clip(np.vstack(rows), 0, 1) * 255).round().astype(np.uint8)
    label = np.full((40, grid.shape[1], 3), 255, np.uint8)
    for j, text in enumerate(("JPEG", "enhanced", "original")):
        cv2.putText(label, text, (j * grid.shape[1] // 3 + 10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 0, 0), 2)
    cv2.imwrite(str(path), cv2.cvtColor(np.vstack([label, grid]), cv2.COLOR_RGB2BGR))


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
