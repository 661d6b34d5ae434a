"""Target 2: what the micro-batcher buys where batching pays, on a simulated device.

The real app (create_app, batcher, tiling, decode/encode, uvicorn, HTTP) runs on
benchmarks/baselines/simulated.py's device: a batch of n tiles costs a + b*n (a = 5 ms, b = 0.25 ms) of
sleep on the model thread. Throughput at concurrency 32 with max batch 32 / with max batch 1;
the cost model alone allows (32 / (a + 32 b)) / (1 / (a + b)) = 12.9x.

Two workloads, because on this 2-core host the CPU work around the device (HTTP, decode,
split, stitch, encode) can be the bottleneck instead of the device:

* `device_bound`: 512x512 JPEGs cut into 64x64 tiles (overlap 8: 100 tiles per request, answered as
  JPEG), so the host spends well under the device's 0.25 ms per tile and the device limits
  throughput, as a GPU would with its host keeping up. This is the target's measurement.
* `one_tile`: 256x256 JPEGs with the production tiling (tile 512: one 380x380 tile per request,
  PNG answers): each request carries a single tile, so host work per tile is ~20x the device's.

Then `max_batch_delay_ms` is swept (max batch 32) for the throughput-vs-p99 plot on three loads:
`device_bound` at concurrency 32 (batches fill on their own), `few_tiles` at concurrency 4
(256x256 JPEGs in nine 128x128 tiles: at most 36 tiles outstanding, so how long a batch waits
decides how full it gets) and `one_tile` at concurrency 32 (host-bound).
"""

from __future__ import annotations

import asyncio

from benchmarks.baselines.simulated import ceiling_ratio
from benchmarks.harness.common import log
from benchmarks.harness.inputs import group
from benchmarks.harness.loadgen import LoadGenerator, Payload
from benchmarks.harness.profiles import Profile
from benchmarks.harness.server import simulated_server

A_MS, B_MS = 5.0, 0.25
WORKLOADS = {
    "device_bound": {"images": "crop512", "params": {"format": "jpeg", "quality": 90},
                      "settings": {"tile_size": 64, "tile_overlap": 8, "max_queue_tiles": 8192}},
    "few_tiles": {"images": "crop256", "params": {"format": "jpeg", "quality": 90},
                  "settings": {"tile_size": 128, "tile_overlap": 16, "max_queue_tiles": 4096}},
    "one_tile": {"images": "crop256", "params": {"format": "png"},
                 "settings": {"tile_size": 512, "tile_overlap": 32, "max_queue_tiles": 1024}},
}


def _measure(workload: str, concurrency: int, max_batch: int, delay_ms: float, profile: Profile,
             in_flight: int = 1) -> dict:
    spec = WORKLOADS[workload]
    payloads = [Payload.from_image(img) for img in group(spec["images"])]
    name = f"sim-{workload}-b{max_batch}-d{delay_ms:g}-f{in_flight}"
    with simulated_server(name, batch_cost_ms=A_MS, per_tile_ms=B_MS, max_batch_size=max_batch,
                          max_batch_delay_ms=delay_ms, batches_in_flight=in_flight, **spec["settings"]) as server:
        lg = LoadGenerator(server.url + "/upscale", payloads, params=spec["params"],
                           metrics_url=server.url + "/metrics", server_pid=server.pid)
        log(f"{name}: concurrency {concurrency}")
        result = asyncio.run(lg.closed_loop(concurrency, window_s=profile.batching_window_s,
                                            min_requests=max(profile.min_requests, concurrency),
                                            max_windows=profile.max_windows))
        result["served"] = server.served
    sm = result["server_metrics"]
    ran = result["served"]["settings"]  # as the server reports them, not as asked
    result.update(workload=workload, max_batch_size=ran["max_batch_size"], max_batch_delay_ms=ran["max_batch_delay_ms"],
                  batches_in_flight=ran["batches_in_flight"],
                  tiles_per_s=(sm.get("tiles") or 0) / sm["wall_s"] if sm else None)
    return result


def run(profile: Profile) -> dict:
    result = {"cost_model": {"a_ms": A_MS, "b_ms": B_MS, "ceiling_ratio_batch32": ceiling_ratio(A_MS / 1000, B_MS / 1000, 32)},
              "workloads": WORKLOADS, "target": {}, "sweep": []}
    for workload in ("device_bound", "one_tile"):
        b1 = _measure(workload, 32, 1, 5.0, profile)
        b32 = _measure(workload, 32, 32, 5.0, profile)
        ratio = b32["req_per_s"] / b1["req_per_s"] if b1["req_per_s"] else None
        result["target"][workload] = {"batch1": b1, "batch32": b32, "ratio": ratio}
        log(f"batching {workload}: {b1['req_per_s']:.1f} -> {b32['req_per_s']:.1f} req/s = x{ratio:.2f}")
    result["in_flight"] = batches_in_flight(profile)
    sweeps = [("device_bound", 32), ("few_tiles", 4), ("one_tile", 32)]
    for workload, concurrency in sweeps:
        for delay in profile.batching_delays_ms:
            entry = _measure(workload, concurrency, 32, delay, profile)
            entry["concurrency"] = concurrency
            result["sweep"].append(entry)
    return result


def batches_in_flight(profile: Profile, pairs: int = 2) -> dict:
    """device_bound at max batch 32 with one and with two batches in flight, alternating `pairs`
    times (drift hits both alike): does stacking the next batch while the device runs pay?"""
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for _ in range(pairs):
        for in_flight in (1, 2):
            runs[in_flight].append(_measure("device_bound", 32, 32, 5.0, profile, in_flight=in_flight))

    def mean(in_flight: int, value) -> float:
        return sum(value(r) for r in runs[in_flight]) / len(runs[in_flight])

    summary = {str(f): {"req_per_s": mean(f, lambda r: r["req_per_s"]), "p99_s": mean(f, lambda r: r["p99_s"]),
                        "model_busy_fraction": mean(f, lambda r: r["server_metrics"].get("model_busy_fraction") or 0)}
               for f in (1, 2)}  # fmt: skip
    summary["ratio"] = summary["2"]["req_per_s"] / summary["1"]["req_per_s"]
    log(f"batches in flight 1 -> 2: {summary['1']['req_per_s']:.1f} -> {summary['2']['req_per_s']:.1f} req/s "
        f"= x{summary['ratio']:.2f}; model busy {summary['1']['model_busy_fraction']:.2f} -> {summary['2']['model_busy_fraction']:.2f}")
    return {"runs": {str(f): r for f, r in runs.items()}, "summary": summary}
