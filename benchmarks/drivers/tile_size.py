"""Which CPU tile size: time of the server's tiled path per image size, for several tile sizes.

The model's speed per pixel barely depends on the tile (256-1024 px), so what a tile size costs
is its plan's padding and overlap waste, which jumps with how an image's sides fall on the
tile ladder. This measures it directly: the same image, `tiling.enhance_tiled` with each tile
size (overlap 32, batch 1: the CPU defaults), the sizes interleaved in each repeat so drift in
a shared machine's speed hits them alike; median time per (image, tile size), and the waste.
Inputs are uniform noise (the net's cost does not depend on content).

    python -m benchmarks.drivers.tile_size --json benchmarks/results/tile_size.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.harness.common import log, machine_info, write_json
from benchmarks.harness.profiles import Profile

SIZES = ((512, 512), (480, 640), (600, 800), (768, 1024), (1080, 1920), (3000, 4000))  # (height, width)
TILE_SIZES = (512, 576, 640)
OVERLAP, BATCH = 32, 1


def measure(repeats: int) -> dict:
    from enhancer import tiling

    from benchmarks.harness.common import bound_forward, load_default_model

    runner = load_default_model()
    forward = bound_forward(runner)  # noise, not a JPEG file: the blind inputs, if the model takes any
    multiple = runner.spec.size_multiple
    for tile in TILE_SIZES:
        runner.warm_up(tiling.bucket_shapes(tile, multiple), BATCH)
    rng = np.random.default_rng(0)
    rows = []
    for h, w in SIZES:
        image = rng.uniform(0, 1, (h, w, 3)).astype(np.float32)
        times: dict[int, list[float]] = {t: [] for t in TILE_SIZES}
        for _ in range(repeats if h * w < 2e6 else 1):
            for tile in TILE_SIZES:
                start = time.perf_counter()
                tiling.enhance_tiled(image, forward, tile, OVERLAP, BATCH, multiple=multiple)
                times[tile].append(time.perf_counter() - start)
        row = {"width": w, "height": h, "megapixels": w * h / 1e6}
        for tile in TILE_SIZES:
            plan = tiling.plan_tiles(h, w, tile, OVERLAP, multiple=multiple)
            row[str(tile)] = {"median_s": float(np.median(times[tile])), "all_s": times[tile],
                              "tiles": plan.num_tiles, "waste_ratio": plan.waste_ratio}  # fmt: skip
        rows.append(row)
        log(f"{w}x{h}: " + ", ".join(f"{t}: {row[str(t)]['median_s']:.3f} s" for t in TILE_SIZES))
    return {"machine": machine_info(), "settings": {"overlap": OVERLAP, "batch": BATCH}, "images": rows,
            "model": {"name": runner.spec.name, "device": runner.device, "precision": runner.precision}}


def run(profile: Profile) -> dict:
    """For `python -m benchmarks.run` (results/tile_size.json)."""
    return measure(profile.tile_size_repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    write_json(args.json, measure(args.repeats))


if __name__ == "__main__":
    main()
