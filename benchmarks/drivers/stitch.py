"""Stitching time: the model's 16-bit tiles blended into an 8-bit answer (`enhancer.tiling.stitch`).

For a large answer the stitch is the largest piece of host work after inference, and it runs on
the cores the model uses. This times it alone, in-process, on random 16-bit tiles laid out as the
server's default plans lay them out (tile and overlap per model, as `/readyz` lists them), median
of a few rounds. To compare two versions of the code, run it once per source tree, alternating:

    python -m benchmarks.drivers.stitch --json benchmarks/results/stitch.json
    PYTHONPATH=/path/to/old/src python -m benchmarks.drivers.stitch --json /tmp/stitch_old.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.harness.common import log, machine_info, write_json

#: name -> (input height, width, tile, overlap, scale): the answers the fairness and efficiency
#: benchmarks ask for, with the tiling the server gives each model.
CASES = {
    "1x 12 MP (4000x3000)": (3000, 4000, 576, 48, 1),
    "2x 24 MP answer (3000x2000 in)": (2000, 3000, 288, 48, 2),
    "4x 24 MP answer (1500x1000 in)": (1000, 1500, 288, 64, 4),
}


def measure(rounds: int) -> dict:
    import enhancer.tiling as tiling

    rng = np.random.default_rng(0)
    results = {}
    for name, (h, w, tile, overlap, scale) in CASES.items():
        plan = tiling.plan_tiles(h, w, tile, overlap, multiple=16, context=0, buckets=False)
        th, tw = plan.tile_shape
        tiles = rng.integers(0, 65536, (plan.num_tiles, th * scale, tw * scale, 3), dtype=np.uint16)
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            tiling.stitch(tiles, plan, scale=scale, dtype=np.uint8)
            times.append(time.perf_counter() - started)
        results[name] = {"tiles": plan.num_tiles, "tile_shape": [th * scale, tw * scale], "seconds": times,
                         "median_s": float(np.median(times))}  # fmt: skip
        log(f"{name}: {plan.num_tiles} tiles, median {np.median(times):.3f} s")
    return {"source": tiling.__file__, "rounds": rounds, "cases": results, "machine": machine_info()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    write_json(args.json, measure(args.rounds))


if __name__ == "__main__":
    main()
