"""How long and how thoroughly to measure: `quick` (a smoke run of every benchmark, ~5 min)
and `full` (the figures in RESULTS.md, ~25-35 min on a 2-core CPU)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Profile:
    name: str
    # closed-loop windows (perf_analyzer style)
    window_s: float
    min_requests: int
    max_windows: int
    levels: tuple[int, ...]
    # open loop: offered rates as fractions of the closed-loop throughput at concurrency 8
    open_loop_fractions: tuple[float, ...]
    open_loop_s: float
    # in-process model timing
    raw_min_seconds: float
    # fairness: seconds of small-image load without the big image; big images served
    fairness_baseline_s: float
    fairness_big_images: int
    # memory: images sent one by one to a fresh server, ascending
    memory_images: tuple[str, ...]
    # tiling cost: images compared tiled vs whole
    tiling_images: tuple[str, ...]
    tiling_repeats: int
    # batching on the simulated device: max_batch_delay_ms values swept
    batching_delays_ms: tuple[float, ...]
    batching_window_s: float
    # soak: requests after warm-up, warm-up requests (RSS growth measured between the two)
    soak_requests: int
    soak_warmup: int
    # CPU tile size: timing repeats per image (the 12 MP image is timed once)
    tile_size_repeats: int
    extra: dict = field(default_factory=dict)


QUICK = Profile(
    name="quick",
    window_s=2.0,
    min_requests=4,
    max_windows=4,
    levels=(1, 8),
    open_loop_fractions=(0.5,),
    open_loop_s=10.0,
    raw_min_seconds=3.0,
    fairness_baseline_s=10.0,
    fairness_big_images=1,
    memory_images=("mosaic_1mp", "mosaic_4mp", "mosaic_12mp"),
    tiling_images=("crop512_0", "hd1080"),
    tiling_repeats=1,
    batching_delays_ms=(0.0, 5.0, 20.0),
    batching_window_s=2.0,
    soak_requests=100,
    soak_warmup=20,
    tile_size_repeats=1,
)

FULL = Profile(
    name="full",
    window_s=5.0,
    min_requests=20,
    max_windows=10,
    levels=(1, 2, 4, 8, 16, 32),
    open_loop_fractions=(0.5, 0.8, 0.95),
    open_loop_s=30.0,
    raw_min_seconds=12.0,
    fairness_baseline_s=40.0,
    fairness_big_images=2,
    memory_images=("mosaic_1mp", "mosaic_2mp", "mosaic_4mp", "mosaic_8mp", "mosaic_12mp", "mosaic_24mp", "mosaic_48mp"),
    tiling_images=("crop512_0", "hd1080", "mosaic_12mp"),
    tiling_repeats=3,
    batching_delays_ms=(0.0, 2.0, 5.0, 20.0, 50.0),
    batching_window_s=4.0,
    soak_requests=2000,
    soak_warmup=200,
    tile_size_repeats=3,
)

PROFILES = {p.name: p for p in (QUICK, FULL)}
