"""Upscaling (issue 14): per-scale latency, throughput and memory of `enhancer serve`, and the
measurement behind ENHANCER_MAX_OUTPUT_PIXELS's default.

One `enhancer serve` with default settings serving weights/dejpeg-q (scale 1) and 2x and 4x
upscalers: weights/upscale-x2 and weights/upscale-x4 when they hold trained models, else the same
architecture (`build_upscaler`, full size) untrained, exported into benchmarks/out/models/: the
weights do not change the cost. The settings are read back from the server itself: /readyz (models,
scales, device, precision) and its start-up log line (tiles, overlap, batching).

* Latency: 256x256 JPEGs one at a time at each scale (answers 256, 512, 1024 px square).
* Throughput: 512x512 JPEGs at concurrency 2 (closed loop), in answer megapixels per second.
* Memory: single requests of growing answers at 2x and 4x, each with the kernel's high-water mark
  reset just before (as drivers/memory.py); growth = peak - idle RSS, fitted per scale against the
  answer's megapixels. The largest answer is ENHANCER_MAX_OUTPUT_PIXELS's default, at 4x (the
  cheaper scale to compute it at) and, in the full profile, at 2x.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from benchmarks.drivers.memory import _linear_fit, _reset_peak
from benchmarks.harness.common import OUT_DIR, REPO, log
from benchmarks.harness.inputs import INPUT_DIR, InputImage, _mosaic, _write, ensure_inputs, group
from benchmarks.harness.loadgen import LoadGenerator, Payload, summarize
from benchmarks.harness.profiles import Profile
from benchmarks.harness.server import RssSampler, enhancer_server, kernel_peak_rss, process_tree_rss

MODELS_DIR = OUT_DIR / "models"
SCALES = (1, 2, 4)


def upscaler_dirs() -> tuple[dict[int, Path], str]:
    """scale -> model folder, and what the weights are ("trained" or "untrained ...")."""
    shipped = {scale: REPO / "weights" / f"upscale-x{scale}" for scale in (2, 4)}
    if all((folder / "saved_model.pb").is_file() for folder in shipped.values()):
        return shipped, "trained (weights/upscale-x2, weights/upscale-x4)"
    from enhancer.training.export import export_saved_model
    from enhancer.training.network import build_upscaler

    dirs = {}
    for scale in (2, 4):
        folder = MODELS_DIR / f"upscale-x{scale}"
        if not (folder / "saved_model.pb").is_file():
            log(f"exporting an untrained full-size upscaler x{scale} to {folder}")
            export_saved_model(build_upscaler(scale), folder, {"note": "untrained, for benchmarks: the cost of the architecture"})
        dirs[scale] = folder
    return dirs, "untrained build_upscaler (default size), the cost of the shipped architecture"


def input_of(width: int, height: int) -> InputImage:
    """A photo mosaic JPEG of exactly width x height (benchmarks.inputs' recipe), made once."""
    name = f"mosaic_{width}x{height}"
    path = INPUT_DIR / f"{name}.jpg"
    if not path.exists():
        INPUT_DIR.mkdir(parents=True, exist_ok=True)
        _write(path, _mosaic(width, height))
    return InputImage(name, path, width, height, path.stat().st_size)


def read_back_settings(server) -> dict:
    """What the server says it runs: /readyz, and its start-up line about tiles and batching."""
    import httpx

    ready = httpx.get(server.url + "/readyz", timeout=10).json()
    text = server.log_path.read_text(errors="replace")
    line = next((m.group(0) for m in re.finditer(r"inference on .*", text)), None)
    return {"readyz": ready, "startup_line": line, "startup_s": server.startup_s}


async def _latency(url: str, scale: int, repeats: int) -> dict:
    lg = LoadGenerator(url, [Payload.from_image(img) for img in group("crop256")], params={"format": "png", "scale": scale})
    async with lg.client(2) as client:
        await lg.send(client)  # warm the connection
        samples = [await lg.send(client) for _ in range(repeats)]
    summary = summarize(samples, sum(s.latency for s in samples))
    summary["answer_px"] = 256 * scale
    return summary


async def _throughput(url: str, scale: int, seconds: float) -> dict:
    lg = LoadGenerator(url, [Payload.from_image(img) for img in group("crop512")], params={"format": "png", "scale": scale})
    async with lg.client(4) as client:
        await lg.send(client)
        started = time.perf_counter()
        samples = await lg.run_closed(client, 2, duration_s=seconds)
        wall = time.perf_counter() - started
    summary = summarize(samples, wall)
    summary["answer_mp_per_s"] = summary["mp_per_s"] * scale * scale
    summary["concurrency"] = 2
    return summary


def _memory(server, cases: list[tuple[int, int, int]]) -> list[dict]:
    rows = []
    for scale, width, height in cases:
        image = input_of(width, height)
        lg = LoadGenerator(server.url + "/upscale", [], params={"format": "png", "scale": scale})
        payload = Payload.from_image(image)
        time.sleep(1.0)
        idle = process_tree_rss(server.pid)
        reset = _reset_peak(server.pid)
        with RssSampler(server.pid) as sampler:
            sample = asyncio.run(lg.one_request(payload))
        if not sample.ok:
            raise RuntimeError(f"{scale}x {width}x{height}: HTTP {sample.status} {sample.error}")
        hwm = kernel_peak_rss(server.pid) if reset else None
        peak = max(sampler.peak, hwm or 0)
        answer_mp = width * height * scale * scale / 1e6
        rows.append({
            "scale": scale, "input": f"{width}x{height}", "answer": f"{width * scale}x{height * scale}",
            "answer_megapixels": answer_mp, "idle_rss_bytes": idle, "peak_rss_bytes": peak,
            "peak_kernel_hwm_bytes": hwm, "growth_bytes": peak - idle, "latency_s": sample.latency,
            "answer_mp_per_s": answer_mp / sample.latency, "server_timing_s": sample.timing,
        })  # fmt: skip
        log(f"upscale memory {scale}x {width}x{height} -> {answer_mp:.1f} MP: peak {peak / 2**30:.2f} GiB "
            f"(idle {idle / 2**30:.2f} GiB, +{(peak - idle) / 2**20:.0f} MiB), {sample.latency:.1f} s")  # fmt: skip
    return rows


def run(profile: Profile) -> dict:
    from enhancer.config import DEFAULT_MAX_OUTPUT_PIXELS

    dirs, weights = upscaler_dirs()
    full = profile.name == "full"
    side4 = int((DEFAULT_MAX_OUTPUT_PIXELS / 16) ** 0.5)  # the 4x input whose answer is the default limit
    cases = [(4, 500, 375), (4, 1000, 750), (4, side4, side4)]
    cases += [(2, 1000, 750), (2, 2000, 1500)] + ([(2, 4000, 3000)] if full else [])
    ensure_inputs([f"crop256_{i}" for i in range(8)] + [f"crop512_{i}" for i in range(8)])
    with enhancer_server(
        "enhancer-upscale", upscale_model_dirs=",".join(str(d) for d in dirs.values()), log_level="info"
    ) as server:
        settings = read_back_settings(server)
        idle_after_start = process_tree_rss(server.pid)
        url = server.url + "/upscale"
        per_scale = {}
        for scale in SCALES:
            latency = asyncio.run(_latency(url, scale, 10 if full else 4))
            throughput = asyncio.run(_throughput(url, scale, 30.0 if full else 8.0))
            per_scale[str(scale)] = {"latency_256": latency, "throughput_512": throughput}
            log(f"upscale {scale}x: 256 px p50 {latency['p50_s']:.3f} s; 512 px at concurrency 2: "
                f"{throughput['answer_mp_per_s']:.2f} answer MP/s")  # fmt: skip
        memory = _memory(server, cases)
    fits = {}
    for scale in (2, 4):
        rows = [r for r in memory if r["scale"] == scale]
        fits[str(scale)] = _linear_fit([r["answer_megapixels"] for r in rows], [r["growth_bytes"] for r in rows])
    return {
        "weights": weights,
        "models": {str(k): str(v) for k, v in dirs.items()},
        "settings_read_back": settings,
        "idle_after_start_bytes": idle_after_start,
        "per_scale": per_scale,
        "memory": memory,
        "memory_fit_per_answer_mp": fits,
        "default_max_output_pixels": DEFAULT_MAX_OUTPUT_PIXELS,
    }
