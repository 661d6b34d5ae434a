"""Border context: what the tiler's mirrored margin buys at the image border, and what it costs.

Issue 15: every image border gets mirrored context before the model runs, so a 512x512 image
runs as more pixels than it has. This measures, on the held-out test set (data/testset, 17 images
of kinds training lacks) saved by OpenCV as JPEG q10 / q30 / q50, the PSNR against the clean
image of the outer BAND px (every pixel within BAND px of an edge), the interior and the whole,
for these ways of running the served model (the server's decode and `quantization` input in all):

* ``server``: the server's tiling as it was before this measurement (tile and overlap as `enhancer
  serve` resolves them for the model, mirrored margin up to the overlap, bucketed tile sizes,
  blending): ENHANCER_BORDER_CONTEXT=48 ENHANCER_TILE_BUCKETS=true today;
* ``mirror48`` / ``mirror32`` / ``mirror16``: the whole image as one tile with that many mirrored
  pixels on every side (then mirrored up to the size multiple at the bottom/right);
* ``whole``: the image as it is, in one forward pass: only the SavedModel signature pads the
  bottom/right edge up to the size multiple (edge replication) and the network's convolutions
  zero-pad, i.e. the model's own border handling.

Outputs are rounded to 8 bits as the PNG answer is. Then times, on the 512x512 test images,
each way interleaved (round-robin, several rounds, medians): what the context costs.

    python -m benchmarks.drivers.border --json benchmarks/results/border.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.harness.common import REPO, log, machine_info, write_json

TESTSET = REPO / "data" / "testset"
QUALITIES = (10, 30, 50)
BAND = 32
MARGINS = (48, 32, 16)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def band_mask(height: int, width: int, band: int = BAND) -> np.ndarray:
    """True for every pixel within `band` px of an edge."""
    y = np.arange(height)[:, None]
    x = np.arange(width)[None, :]
    return (np.minimum(y, height - 1 - y) < band) | (np.minimum(x, width - 1 - x) < band)


def _to8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)  # as the encoder quantises


def mirrored_forward(runner, rgb: np.ndarray, inputs: dict, margin: int) -> np.ndarray:
    """The whole image as one tile with `margin` mirrored pixels on each side (and mirrored up to
    the size multiple at the bottom/right); margin 0 = the image as it is (the signature pads)."""
    h, w = rgb.shape[:2]
    m = runner.spec.size_multiple
    if margin == 0:
        padded = rgb
    else:
        extra_h = -(h + 2 * margin) % m
        extra_w = -(w + 2 * margin) % m
        padded = np.pad(rgb, ((margin, margin + extra_h), (margin, margin + extra_w), (0, 0)), mode="reflect")
    rows = {k: v[None] for k, v in inputs.items()}
    out = runner.forward(padded[None], rows)[0]
    return out[margin : margin + h, margin : margin + w]


def _server(pipeline, runner, data: bytes):
    from enhancer import tiling
    from enhancer.pipeline import DirectTiles

    prepared = pipeline.prepare(data, runner.spec)
    plan = prepared.plan
    outputs = DirectTiles({runner.spec.name: runner}, 1)(prepared.take_job())
    return tiling.stitch(outputs, plan, scale=runner.spec.scale), plan


def measure_quality(runner, pipeline, qualities=QUALITIES) -> list[dict]:
    import cv2

    from enhancer import imaging
    from enhancer.conditioning import model_inputs
    from enhancer.samples import to_unit_float
    from enhancer.training.testset import load_testset

    rows = []
    for name, kind, bgr in load_testset(TESTSET):
        clean = bgr[:, :, ::-1]
        h, w = clean.shape[:2]
        band = band_mask(h, w)
        for q in qualities:
            ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q])
            assert ok
            data = buf.tobytes()
            image = imaging.decode(data)
            rgb = to_unit_float(image.pixels)
            inputs = model_inputs(runner.spec, image.info)
            outs = {"jpeg": _to8(rgb)}
            server_rgb, plan = _server(pipeline, runner, data)
            outs["server"] = _to8(server_rgb)
            for margin in MARGINS:
                outs[f"mirror{margin}"] = _to8(mirrored_forward(runner, rgb, inputs, margin))
            outs["whole"] = _to8(mirrored_forward(runner, rgb, inputs, 0))
            row = {"image": name, "kind": kind, "width": w, "height": h, "quality": q,
                   "server_tiles": plan.num_tiles, "server_tile_shape": list(plan.tile_shape),
                   "server_margin": [plan.rows.pad_before, plan.cols.pad_before]}  # fmt: skip
            for method, out in outs.items():
                row[method] = {
                    "band": _psnr(out[band], clean[band]),
                    "interior": _psnr(out[~band], clean[~band]) if (~band).any() else None,
                    "all": _psnr(out, clean),
                }
            rows.append(row)
            log(f"{name} q{q}: band PSNR " + ", ".join(f"{k} {v['band']:.3f}" for k, v in row.items() if isinstance(v, dict)))
    return rows


def summarise_quality(rows: list[dict], methods: list[str]) -> dict:
    out = {}
    for q in sorted({r["quality"] for r in rows}):
        sel = [r for r in rows if r["quality"] == q]
        entry = {}
        for method in methods:
            diff = [r[method]["band"] - r["whole"]["band"] for r in sel]
            entry[method] = {
                "band_mean": float(np.mean([r[method]["band"] for r in sel])),
                "band_gain_over_jpeg_mean": float(np.mean([r[method]["band"] - r["jpeg"]["band"] for r in sel])),
                "band_minus_whole_mean": float(np.mean(diff)),
                "band_minus_whole_min": float(np.min(diff)),
                "band_minus_whole_max": float(np.max(diff)),
                "all_minus_whole_mean": float(np.mean([r[method]["all"] - r["whole"]["all"] for r in sel])),
            }
        out[str(q)] = entry
    return out


def measure_time(runner, pipeline, rounds: int) -> dict:
    """Seconds per 512x512 image for each way, interleaved: every round runs every way once on
    every 512x512 test image (in a rotating order), so drift and load hit all ways alike."""
    import cv2

    from enhancer import imaging
    from enhancer.conditioning import model_inputs
    from enhancer.samples import to_unit_float
    from enhancer.training.testset import load_testset

    images = [(name, bgr) for name, _, bgr in load_testset(TESTSET) if bgr.shape[:2] == (512, 512)]
    prepared = []
    for name, bgr in images:
        data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 30])[1].tobytes()
        image = imaging.decode(data)
        prepared.append((data, to_unit_float(image.pixels), model_inputs(runner.spec, image.info)))
    ways = {
        "server": lambda d, rgb, inp: _server(pipeline, runner, d),
        **{f"mirror{m}": (lambda m: lambda d, rgb, inp: mirrored_forward(runner, rgb, inp, m))(m) for m in MARGINS},
        "whole": lambda d, rgb, inp: mirrored_forward(runner, rgb, inp, 0),
    }
    for fn in ways.values():  # every shape once before timing
        fn(*prepared[0])
        fn(*prepared[0])
    times: dict[str, list[float]] = {k: [] for k in ways}
    names = list(ways)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for args in prepared:
            for way in order:
                t = time.perf_counter()
                ways[way](*args)
                times[way].append(time.perf_counter() - t)
        log(f"timing round {r + 1}/{rounds}: " + ", ".join(f"{k} {np.median(v) * 1000:.0f} ms" for k, v in times.items()))
    medians = {k: float(np.median(v)) for k, v in times.items()}
    return {
        "images": [n for n, _ in images],
        "rounds": rounds,
        "seconds_median": medians,
        "seconds_all": times,
        "ratio_to_whole": {k: v / medians["whole"] for k, v in medians.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "border.json"))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()

    from benchmarks.harness.common import load_default_model
    from enhancer.config import Settings
    from enhancer.pipeline import Pipeline

    info = machine_info()
    runner = load_default_model()
    settings = Settings().for_device("cpu")
    tile_size, overlap = settings.tiling_for(runner.spec)
    # the tiling before ENHANCER_BORDER_CONTEXT / ENHANCER_TILE_BUCKETS: context = overlap, buckets
    pipeline = Pipeline(tile_size=tile_size, tile_overlap=overlap, border_context=None, tile_buckets=True)
    result = {
        "machine": info,
        "model": runner.spec.name,
        "model_metadata": {k: v for k, v in json.loads((settings.model_dir / "metadata.json").read_text()).items()
                           if k in ("trained_steps", "weights", "exported", "architecture")},  # fmt: skip
        "model_reach": runner.spec.reach,
        "size_multiple": runner.spec.size_multiple,
        "precision": runner.precision,
        "settings": {"tile_size": tile_size, "tile_overlap": overlap, "max_batch_size": settings.max_batch_size},
        "band_px": BAND,
        "qualities": list(QUALITIES),
    }
    if not args.skip_quality:
        rows = measure_quality(runner, pipeline)
        result["quality_rows"] = rows
        result["quality_summary"] = summarise_quality(rows, ["jpeg", "server", *(f"mirror{m}" for m in MARGINS), "whole"])
    result["timing_512"] = measure_time(runner, pipeline, args.rounds)
    result["load_average_at_end"] = list(os.getloadavg())
    write_json(Path(args.json), result)
    log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
