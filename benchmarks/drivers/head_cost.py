"""What an upscaler head of a given width and depth costs on this CPU (issue 14's speed targets).

Why: the narrower heads (`upscale_x2_slim`, `upscale_x4_slim`) were chosen by this probe before
any training. Each candidate is built untrained (weights do not change the cost), exported as the
server loads it, and timed on one tile of the size the server gives upscalers on a CPU (288 input
pixels), batch 1, float32: answer megapixels per second, best of `--repeats`.

    python -m benchmarks.drivers.head_cost --json benchmarks/results/head_cost.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness.common import log, machine_info, write_json

#: (scale, head channels, head blocks): the shipped heads, the wide ones they replaced, and the others tried.
CANDIDATES = ((2, 40, 4), (2, 32, 4), (2, 32, 3), (2, 24, 4), (4, 56, 6), (4, 48, 6), (4, 48, 5), (4, 40, 6), (4, 40, 5))
TILE = 288


def measure(scale: int, channels: int, blocks: int, repeats: int, folder: Path) -> dict:
    import tensorflow as tf

    from enhancer.training.export import export_saved_model
    from enhancer.training.network import QUANTIZATION_LENGTH, build_upscaler, macs_per_pixel

    model = build_upscaler(scale, head_channels=channels, head_blocks=blocks)
    export_saved_model(model, folder / f"x{scale}_{channels}_{blocks}", reach=48)
    serve = tf.saved_model.load(str(folder / f"x{scale}_{channels}_{blocks}")).signatures["serving_default"]
    images = tf.constant(np.random.default_rng(0).random((1, TILE, TILE, 3), np.float32))
    quantization = tf.constant(np.full((1, QUANTIZATION_LENGTH), 4.0, np.float32))
    serve(images=images, quantization=quantization)  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        serve(images=images, quantization=quantization)
        seconds.append(time.perf_counter() - start)
    best = min(seconds)
    return {"scale": scale, "head_channels": channels, "head_blocks": blocks,
            "macs_per_input_pixel": macs_per_pixel(model), "parameters": int(model.count_params()),
            "tile": TILE, "best_s": best, "answer_mp_per_s": scale * scale * TILE * TILE / 1e6 / best}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for scale, channels, blocks in CANDIDATES:
            row = measure(scale, channels, blocks, args.repeats, Path(folder))
            log(f"x{scale} {channels} ch x {blocks}: {row['answer_mp_per_s']:.2f} answer MP/s, "
                f"{row['macs_per_input_pixel'] / 1000:.1f} k MAC per input pixel")  # fmt: skip
            rows.append(row)
    result = {"benchmark": "head_cost", "machine": machine_info(), "precision": "float32", "batch": 1, "heads": rows}
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
