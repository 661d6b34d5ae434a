"""PNG answer encoding: zlib level vs encode time and size (issue 15, host work).

The answer's PNG is encoded on the server's CPU, the same cores that run the model, so every
millisecond of zlib is taken from inference. This times `enhancer.imaging.encode` (what the server runs, given the
8-bit image the server stitches for an 8-bit answer) on real answers, the served model's
output for a 512x512 JPEG and for a 12 MP photo (benchmarks/inputs.py: crop512_0 and
mosaic_12mp, run through the server's pipeline in-process once and cached), with
ENHANCER_PNG_COMPRESSION unset (the speed preset: zlib level 1 with the "sub" filter and the
run-length strategy, written by enhancer.imaging.png in bands on every core) and at explicit zlib
levels (OpenCV's writer: zlib's default strategy, libpng's adaptive filters). Beside them the same
preset on one thread, and OpenCV's own preset (what the unset setting ran before the threaded
writer). Variants are interleaved within every round; medians.

    python -m benchmarks.drivers.png --json benchmarks/results/png.json
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.harness.common import OUT_DIR, REPO, log, machine_info, write_json

LEVELS: tuple[int | None, ...] = (None, 0, 1, 2, 3, 6, 9)
IMAGES = {"512x512": ("crop512_0", 15), "12MP": ("mosaic_12mp", 3)}  # input, rounds


def _answer(name: str) -> tuple[np.ndarray, object]:
    """The served model's answer for the benchmark input `name`, 8-bit RGB as the server stitches
    it for an 8-bit answer (cached)."""
    from enhancer import imaging
    from enhancer.config import Settings
    from enhancer.pipeline import DirectTiles, Pipeline

    from benchmarks.harness.common import load_default_model
    from benchmarks.harness.inputs import ensure_inputs

    data = ensure_inputs([name])[name].read()
    cache = OUT_DIR / f"png_answer_{name}.npy"
    info = imaging.decode(data).info
    if not cache.exists():
        runner = load_default_model()
        settings = Settings().for_device("cpu")
        pipeline = Pipeline.from_settings(settings)
        prepared = pipeline.prepare(data, runner.spec)
        log(f"running the model on {name} ({prepared.plan.num_tiles} tiles) for its answer")
        prepared.outputs = DirectTiles({runner.spec.name: runner}, 1)(prepared.take_job())
        from enhancer import tiling

        rgb = np.clip(tiling.stitch(prepared.outputs, prepared.plan), 0, 1)
        np.save(cache, (rgb * 255 + 0.5).astype(np.uint8))
    return np.load(cache), info


def _variants(rgb: np.ndarray, info, levels) -> dict:
    """Name -> a call that encodes `rgb` as the server would with that choice."""
    import cv2

    from enhancer import imaging
    from enhancer.imaging import OutputFormat, png

    def level(value):
        return lambda: imaging.encode(rgb, OutputFormat.png, info=info, png_compression=value)

    def one_thread():
        return png.write_png(rgb, threads=1)

    def opencv_preset():  # as encode ran it before: a BGR copy, then OpenCV's writer
        return cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))[1].tobytes()

    calls = {str(value): level(value) for value in levels}
    calls.update({"one-thread": one_thread, "opencv-preset": opencv_preset})
    return calls


def measure(images=IMAGES, levels=LEVELS) -> dict:
    out = {}
    for label, (name, rounds) in images.items():
        rgb, info = _answer(name)
        variants = _variants(rgb, info, levels)
        names = list(variants)
        times: dict[str, list[float]] = {key: [] for key in names}
        sizes = {key: len(call()) for key, call in variants.items()}  # once each before timing
        for r in range(rounds):
            for key in names[r % len(names):] + names[: r % len(names)]:
                t = time.perf_counter()
                variants[key]()
                times[key].append(time.perf_counter() - t)
        medians = {k: float(np.median(v)) for k, v in times.items()}
        out[label] = {
            "input": name,
            "width": rgb.shape[1],
            "height": rgb.shape[0],
            "rounds": rounds,
            "seconds_median": medians,
            "seconds_all": times,
            "bytes": sizes,
            "time_vs_default": {k: v / medians["None"] for k, v in medians.items()},
            "size_vs_default": {k: v / sizes["None"] for k, v in sizes.items()},
        }
        log(f"{label}: " + ", ".join(f"{k}: {medians[k] * 1000:.0f} ms {sizes[k] / 1e6:.2f} MB" for k in medians))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "png.json"))
    parser.add_argument("--levels", default=",".join("unset" if v is None else str(v) for v in LEVELS),
                        help="comma-separated zlib levels to time, 'unset' for the preset (level 9 takes minutes at 12 MP)")
    args = parser.parse_args()
    levels = tuple(None if v.strip() == "unset" else int(v) for v in args.levels.split(","))
    result = {"machine": machine_info(), "levels": ["None" if v is None else v for v in levels], "threads": os.cpu_count()}
    result["encode"] = measure(levels=levels)
    result["load_average_at_end"] = list(os.getloadavg())
    write_json(Path(args.json), result)
    log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
