"""Target 4: peak resident memory of the server while it enhances one image, 1 MP to 48 MP.

A fresh `enhancer serve` (default settings) gets the images one at a time, smallest first. For
each, the kernel's high-water mark (VmHWM) is reset just before the upload (`/proc/PID/clear_refs`
= 5) and read after the answer, so short spikes between samples are caught too; a 20 ms RSS
sampler records the curve for the plot. Reported: the peak, the idle RSS before the request, and
their difference (what this image cost), against megapixels and tiles (planned with the tile size
and overlap the server reports on /readyz, which the JSON records). Target: 48 MP <= 3 GB.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from benchmarks.harness.common import log
from benchmarks.harness.inputs import ensure_inputs
from benchmarks.harness.loadgen import LoadGenerator, Payload
from benchmarks.harness.profiles import Profile
from benchmarks.harness.server import RssSampler, enhancer_server, kernel_peak_rss, process_tree_rss


def _reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run(profile: Profile) -> dict:
    from enhancer import tiling
    from enhancer.config import Settings
    from enhancer.models.contract import read_spec

    multiple = read_spec(Settings().model_dir).size_multiple  # the served model's, from its metadata
    images = ensure_inputs(list(profile.memory_images))
    rows = []
    with enhancer_server("enhancer-memory") as server:
        served = server.served
        tile_size, tile_overlap = served["settings"]["tile_size"], served["settings"]["tile_overlap"]
        lg = LoadGenerator(server.url + "/upscale", [])
        idle_after_start = process_tree_rss(server.pid)
        for name in profile.memory_images:
            img = images[name]
            payload = Payload.from_image(img)
            time.sleep(1.0)
            idle = process_tree_rss(server.pid)
            reset = _reset_peak(server.pid)
            with RssSampler(server.pid) as sampler:
                sample = asyncio.run(lg.one_request(payload))
            if not sample.ok:
                raise RuntimeError(f"{name}: HTTP {sample.status} {sample.error}")
            hwm = kernel_peak_rss(server.pid) if reset else None
            peak = max(sampler.peak, hwm or 0)
            plan = tiling.plan_tiles(img.height, img.width, tile_size, tile_overlap, multiple=multiple)
            row = {
                **img.row(plan),
                "idle_rss_bytes": idle,
                "peak_rss_bytes": peak,
                "peak_sampled_bytes": sampler.peak,
                "peak_kernel_hwm_bytes": hwm,
                "growth_bytes": peak - idle,
                "latency_s": sample.latency,
                "server_timing_s": sample.timing,
                "rss_curve": [[round(t, 3), r] for t, r in sampler.samples[:: max(1, len(sampler.samples) // 400)]],
            }
            rows.append(row)
            log(f"memory {name}: peak {peak / 2**30:.2f} GiB (idle {idle / 2**30:.2f} GiB, +{(peak - idle) / 2**20:.0f} MiB), {sample.latency:.1f} s")
    fit = _linear_fit([r["megapixels"] for r in rows], [r["growth_bytes"] for r in rows])
    return {"idle_after_start_bytes": idle_after_start, "images": rows, "growth_fit": fit, "served": served}


def _linear_fit(xs: list[float], ys: list[float]) -> dict:
    """Least squares y = a + b*x, with R^2 (b is bytes per megapixel)."""
    import numpy as np

    x, y = np.asarray(xs, float), np.asarray(ys, float)
    if len(x) < 2:
        return {}
    b, a = np.polyfit(x, y, 1)
    pred = a + b * x
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum()) or 1.0
    return {"intercept_bytes": float(a), "bytes_per_megapixel": float(b), "bytes_per_pixel": float(b) / 1e6, "r2": 1 - ss_res / ss_tot}
