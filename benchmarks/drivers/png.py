"""PNG answer encoding: zlib level vs encode time and size (issue 15, host work).

The answer's PNG is encoded on the server's CPU, the same cores that run the model, so every
millisecond of zlib is taken from inference. This times `enhancer.imaging.encode` (quantisation
plus OpenCV's PNG writer, i.e. exactly what the server runs) on real answers, the served model's
output for a 512x512 JPEG and for a 12 MP photo (benchmarks/inputs.py: crop512_0 and
mosaic_12mp, run through the server's pipeline in-process once and cached), at OpenCV's default
(ENHANCER_PNG_COMPRESSION unset: zlib level 1 with the "sub" filter and the run-length strategy)
and at explicit zlib levels (level set: zlib's default strategy, libpng's adaptive filters).
Levels are interleaved within every round; medians.

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
    """The served model's answer for the benchmark input `name`, float RGB (cached as uint8)."""
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
    return np.load(cache).astype(np.float32) / 255.0, info


def measure(images=IMAGES, levels=LEVELS) -> dict:
    from enhancer import imaging
    from enhancer.imaging import OutputFormat

    out = {}
    for label, (name, rounds) in images.items():
        rgb, info = _answer(name)
        times: dict[str, list[float]] = {str(level): [] for level in levels}
        sizes: dict[str, int] = {}
        for level in levels:  # once each before timing
            sizes[str(level)] = len(imaging.encode(rgb, OutputFormat.png, info=info, png_compression=level))
        for r in range(rounds):
            order = list(levels[r % len(levels):]) + list(levels[: r % len(levels)])
            for level in order:
                t = time.perf_counter()
                imaging.encode(rgb, OutputFormat.png, info=info, png_compression=level)
                times[str(level)].append(time.perf_counter() - t)
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
        log(f"{label}: " + ", ".join(f"level {k}: {medians[k] * 1000:.0f} ms {sizes[k] / 1e6:.2f} MB" for k in medians))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "png.json"))
    args = parser.parse_args()
    result = {"machine": machine_info(), "levels": ["None" if v is None else v for v in LEVELS]}
    result["encode"] = measure()
    result["load_average_at_end"] = list(os.getloadavg())
    write_json(Path(args.json), result)
    log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
