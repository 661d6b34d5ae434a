"""What a tile shape's first call costs once a model has run one other shape (why warm-up at exact
tile shapes runs only the largest tile: `enhancer.runtime.warm_up_shapes`).

Loads the served models in-process (default settings), runs each once at its largest tile, then
times, for a few shapes it has not seen, the first call and a repeated call, wall clock and process
CPU time. The start-up measurement itself is `python -m benchmarks.drivers.scaleout coldstart`.

    python -m benchmarks.drivers.first_call --json benchmarks/results/first_call.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.harness.common import log, machine_info, write_json

#: shapes a request could bring (exact tiles: any multiple of 16 up to the tile), per tile size
NEW_SHAPES = {576: [(512, 512), (496, 368), (384, 512), (432, 288), (160, 224), (64, 64)],
              288: [(256, 256), (208, 144), (96, 272), (64, 64)]}  # fmt: skip


def _timed(model, shape) -> tuple[float, float]:
    batch = np.full((1, *shape, 3), 0.5, np.float32)
    extra = {name: np.zeros((1, length), np.float32) for name, length in model.spec.inputs.items()}
    wall, cpu = time.perf_counter(), time.process_time()
    model.forward(batch, extra)
    return time.perf_counter() - wall, time.process_time() - cpu


def measure() -> dict:
    from enhancer.config import Settings
    from enhancer.models.registry import ModelRegistry

    settings = Settings()
    registry = ModelRegistry.load(settings)
    resolved = settings.for_device(registry.device_kind)
    out = {}
    for name, model in registry.items():
        tile = resolved.tiling_for(model.spec).tile_size
        first, _ = _timed(model, (tile, tile))
        again, _ = _timed(model, (tile, tile))
        rows = []
        for shape in NEW_SHAPES.get(tile, NEW_SHAPES[288]):
            (w1, c1), (w2, c2) = _timed(model, shape), _timed(model, shape)
            rows.append({"shape": list(shape), "first_s": w1, "first_cpu_s": c1, "repeat_s": w2, "repeat_cpu_s": c2})
            log(f"{name} {shape}: first {w1 * 1000:.0f} ms, repeat {w2 * 1000:.0f} ms")
        out[name] = {"tile": tile, "largest_first_s": first, "largest_repeat_s": again, "new_shapes": rows}
    return {"models": out, "machine": machine_info()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    write_json(parser.parse_args().json, measure())


if __name__ == "__main__":
    main()
