"""The practical limit: the SavedModel called in-process on the very tiles the server would run.

Decodes the inputs with the server's own code, cuts them with the server's tiling plan, and
times the model runner's `forward` on batches of those tiles (no HTTP, no queue, no threads but
TensorFlow's). Megapixels/s count *image* pixels, as the end-to-end figure does, so padding and
overlap are charged to both sides alike. Also times the per-image host work the server adds
around the model (decode, split, stitch + clip, encode: the server's own pipeline with the model
left out), single-threaded, for the breakdown.

    python -m benchmarks.baselines.raw_model --images crop512 --batch-sizes 1,4 --json out.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.harness.common import log, machine_info, write_json
from benchmarks.harness.inputs import group


def _time_batches(forward, tiles: np.ndarray, batch: int, min_seconds: float, min_batches: int) -> tuple[int, float, list[float], float]:
    """Run consecutive batches of `batch` tiles (cycling) for at least `min_seconds`.

    Returns tiles done, seconds, per-batch seconds and the CPU cores the process used meanwhile.
    """
    forward(tiles[:batch])  # this exact shape once more, so no first-call cost is timed
    done, per_batch = 0, []
    started = time.perf_counter()
    cpu_started = time.process_time()
    i = 0
    while True:
        index = [(i + k) % len(tiles) for k in range(batch)]
        t = time.perf_counter()
        forward(tiles[index])
        per_batch.append(time.perf_counter() - t)
        i += batch
        done += batch
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds and len(per_batch) >= min_batches:
            return done, elapsed, per_batch, (time.process_time() - cpu_started) / elapsed


def measure(image_group: str, batch_sizes: list[int], tile_size: int, overlap: int, min_seconds: float,
            min_batches: int = 5, stages: bool = True, repeats: int = 1) -> dict:
    from enhancer import imaging, tiling
    from enhancer.imaging import OutputFormat
    from enhancer.pipeline import Pipeline
    from enhancer.samples import to_unit_float

    from benchmarks.harness.common import bound_forward, load_default_model

    images = group(image_group)
    runner = load_default_model()
    decoded = [imaging.decode(img.read()) for img in images]
    plans = [tiling.plan_tiles(d.info.height, d.info.width, tile_size, overlap, multiple=runner.spec.size_multiple) for d in decoded]
    shapes = {p.tile_shape for p in plans}
    if len(shapes) != 1:
        raise SystemExit(f"images of {image_group} give several tile shapes {shapes}; use one size per run")
    tiles = to_unit_float(np.concatenate([tiling.split(d.pixels, p) for d, p in zip(decoded, plans)]))  # as the model sees them
    tiles_per_image = plans[0].num_tiles
    image_mp = images[0].megapixels
    runner.warm_up(sorted(shapes), max(batch_sizes))
    # The group's crops are JPEGs saved alike (same tables): one image's extra inputs serve them all.
    forward = bound_forward(runner, decoded[0].info)

    result = {
        "machine": machine_info(),
        "images": image_group,
        "image_megapixels": image_mp,
        "tile_shape": list(plans[0].tile_shape),
        "tiles_per_image": tiles_per_image,
        "waste_ratio": plans[0].waste_ratio,
        "device": runner.device,
        "model": {"name": runner.spec.name, "precision": runner.precision},
        "batches": [],
    }
    for repeat in range(repeats):
        for batch in batch_sizes:
            done, elapsed, per_batch, cores = _time_batches(forward, tiles, batch, min_seconds, min_batches)
            mp_per_s = done / tiles_per_image * image_mp / elapsed
            entry = {
                "repeat": repeat,
                "batch_size": batch,
                "tiles": done,
                "seconds": elapsed,
                "tiles_per_s": done / elapsed,
                "mp_per_s": mp_per_s,
                "batch_s_mean": float(np.mean(per_batch)),
                "batch_s_median": float(np.median(per_batch)),
                "cpu_cores": cores,
            }
            result["batches"].append(entry)
            log(f"raw model batch {batch}: {mp_per_s:.3f} MP/s ({done / elapsed:.2f} tiles/s, {entry['batch_s_median'] * 1000:.0f} ms/batch)")

    if stages:
        # The host work the server does per image besides the model, one thread, mean of runs:
        # the server's pipeline with the tiles handed straight back instead of run.
        pipeline = Pipeline(tile_size=tile_size, tile_overlap=overlap)
        data = [img.read() for img in images]
        timings = {"decode": [], "split": [], "stitch_clip": [], "encode_png": [], "encode_jpeg": []}
        for _ in range(3):
            for blob in data:
                for fmt in (OutputFormat.png, OutputFormat.jpeg):
                    prepared = pipeline.prepare(blob, runner.spec)
                    split_s = prepared.timings["tile"]
                    prepared.outputs = prepared.take_job().tiles
                    done = pipeline.finish(prepared, fmt, 95).timings
                    if fmt is OutputFormat.png:
                        timings["decode"].append(done["decode"])
                        timings["split"].append(split_s)
                        timings["stitch_clip"].append(done["tile"] - split_s)
                    timings[f"encode_{fmt.value}"].append(done["encode"])
        result["host_stage_s_per_image"] = {k: float(np.mean(v)) for k, v in timings.items()}
        log("host work per image: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in result["host_stage_s_per_image"].items()))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="crop512")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--tile-overlap", type=int, default=32)
    parser.add_argument("--min-seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-stages", action="store_true")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    result = measure(
        args.images, [int(b) for b in args.batch_sizes.split(",")], args.tile_size, args.tile_overlap,
        args.min_seconds, stages=not args.no_stages, repeats=args.repeats,
    )
    write_json(Path(args.json), result)


if __name__ == "__main__":
    main()
