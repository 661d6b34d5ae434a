"""A simulated accelerator behind the real server: each batch of n tiles costs a + b*n seconds.

It stands in for a GPU so the batcher can be measured where batching pays off: the model thread
sleeps (`time.sleep`, no CPU burnt, like waiting on a device) for the cost of the batch and
returns its input unchanged. Everything else is the production path: `create_app` (through its
`models=` hook), the micro-batcher, tiling, decode/encode, uvicorn, HTTP.

    python -m benchmarks.baselines.simulated --port 8002 --batch-cost-ms 5 --per-tile-ms 0.25
    # every other setting from ENHANCER_* as for `enhancer serve` (e.g. ENHANCER_MAX_BATCH_SIZE=32)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Mapping

import numpy as np

from enhancer.models.contract import ModelSpec


class SimulatedDevice:
    """Keeps the model contract (enhancer.models.contract.Model) with a cost model: an identity
    model named "simulated" (reach 0, so any tile overlap is accepted)."""

    spec = ModelSpec(name="simulated", reach=0)
    device_kind = "cpu"  # the field defaults for tile and batch size apply unless set (the benchmarks set them)
    precision = "float32"

    def __init__(self, batch_cost_s: float = 0.005, per_tile_s: float = 0.00025, sleep=time.sleep):
        if batch_cost_s < 0 or per_tile_s < 0:
            raise ValueError("costs must be >= 0")
        self.batch_cost_s = batch_cost_s
        self.per_tile_s = per_tile_s
        self.device = f"simulated device (batch of n tiles = {batch_cost_s * 1000:g} ms + n x {per_tile_s * 1000:g} ms)"
        self._sleep = sleep
        self.batches: list[int] = []  # sizes of the batches run, for inspection

    def cost_s(self, n: int) -> float:
        return self.batch_cost_s + self.per_tile_s * n

    def forward(self, batch: np.ndarray, inputs: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        if batch.ndim != 4:
            raise ValueError(f"expected a [N, H, W, C] batch, got shape {batch.shape}")
        self._sleep(self.cost_s(len(batch)))
        self.batches.append(len(batch))
        return batch

    def warm_up(self, shapes: Iterable[tuple[int, int]], max_batch_size: int) -> float:
        return 0.0  # nothing to compile


def ceiling_ratio(batch_cost_s: float, per_tile_s: float, max_batch: int) -> float:
    """Throughput of full batches of `max_batch` over batches of 1, by the cost model alone."""
    return (max_batch / (batch_cost_s + per_tile_s * max_batch)) / (1 / (batch_cost_s + per_tile_s))


def main() -> None:
    parser = argparse.ArgumentParser(description="serve the real app on a simulated device")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--batch-cost-ms", type=float, default=5.0)
    parser.add_argument("--per-tile-ms", type=float, default=0.25)
    args = parser.parse_args()

    import uvicorn

    from enhancer.api import create_app
    from enhancer.config import Settings
    from enhancer.models.registry import ModelRegistry

    settings = Settings(host=args.host, port=args.port)
    device = SimulatedDevice(args.batch_cost_ms / 1000, args.per_tile_ms / 1000)
    uvicorn.run(
        create_app(settings, models=ModelRegistry([device])),
        host=args.host,
        port=args.port,
        log_level=settings.log_level,
    )


if __name__ == "__main__":
    main()
