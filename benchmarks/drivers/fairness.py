"""Target 3: does a 24 MP image starve small requests?

Against `enhancer serve` (default settings): 256x256 JPEGs at concurrency 4, first alone for a
while (the baseline), then while a 24 MP JPEG (6000x4000) is being served - from the moment its
upload starts to the moment its answer is complete, so its decode, tiling and encode (CPU work
the small requests also compete with) are included, not only its tiles' turn at the model.
Only small requests that started and finished inside that interval count as "during".

Ratio = p99 latency of small requests during / p99 of the baseline. Target <= 3.

Upscaling (issue 14): the same measurement with the big job a 4x upscale whose answer has the same
24 MP (a 1500x1000 JPEG, `?scale=4`, on the 4x model served beside the restorer), or a 2x upscale
of a 3000x2000 JPEG (`?scale=2`), while the small requests stay at scale 1: batches never mix models, and tiles are dealt round-robin per request
whatever their model, so a 4x job must not starve 1x requests either. The server serves the 2x
and 4x models of drivers/upscale.py (trained, or the untrained architecture of the same cost).
"""

from __future__ import annotations

import asyncio
import time

from benchmarks.harness.common import log, percentiles
from benchmarks.harness.inputs import ensure_inputs, group
from benchmarks.harness.loadgen import LoadGenerator, Payload, Sample, summarize
from benchmarks.harness.profiles import Profile
from benchmarks.harness.server import enhancer_server

SMALL, BIG, CONCURRENCY = "crop256", "mosaic_24mp", 4
#: The upscaling jobs (scale -> input width, height): each answer has BIG's 24 MP.
BIG_UPSCALE = {2: (3000, 2000), 4: (1500, 1000)}


def _series(samples: list[Sample], t0: float) -> list[list[float]]:
    return [[s.start - t0, s.latency, s.status] for s in samples]


async def _measure(server, profile: Profile, big_scale: int = 1) -> dict:
    small = [Payload.from_image(img) for img in group(SMALL)]
    if big_scale == 1:
        big_image = ensure_inputs([BIG])[BIG]
    else:
        from benchmarks.drivers.upscale import input_of

        big_image = input_of(*BIG_UPSCALE[big_scale])
    big = Payload.from_image(big_image)
    label = big_image.name if big_scale == 1 else f"{big_image.name} at {big_scale}x"
    lg = LoadGenerator(server.url + "/upscale", small, metrics_url=server.url + "/metrics")
    big_lg = LoadGenerator(server.url + "/upscale", [big], params={"format": "png", "scale": big_scale})
    async with lg.client(CONCURRENCY + 2) as client, big_lg.client(2) as big_client:
        await lg.run_closed(client, CONCURRENCY, duration_s=3.0)  # warm the connections and caches
        log(f"fairness baseline: {SMALL} at concurrency {CONCURRENCY} for {profile.fairness_baseline_s:.0f} s")
        t0 = time.perf_counter()
        baseline = await lg.run_closed(client, CONCURRENCY, duration_s=profile.fairness_baseline_s)
        during: list[Sample] = []
        all_loaded: list[Sample] = []
        bigs: list[Sample] = []
        for i in range(profile.fairness_big_images):
            log(f"fairness: {SMALL} at concurrency {CONCURRENCY} while {label} is served ({i + 1}/{profile.fairness_big_images})")
            stop = asyncio.Event()
            small_task = asyncio.create_task(lg.run_closed(client, CONCURRENCY, stop=stop))
            await asyncio.sleep(1.0)  # small load is running before the big upload starts
            big_sample = await big_lg.send(big_client, big)
            stop.set()
            loaded = await small_task
            if not big_sample.ok:
                raise RuntimeError(f"the {label} request failed: {big_sample.status} {big_sample.error}")
            bigs.append(big_sample)
            all_loaded += loaded
            during += [s for s in loaded if s.start >= big_sample.start and s.end <= big_sample.end]
            log(f"  {label} took {big_sample.latency:.1f} s; {len(during)} small requests inside so far")
            await asyncio.sleep(2.0)  # let the tail drain before the next round
    base = summarize(baseline, profile.fairness_baseline_s)
    load = summarize(during, sum(b.latency for b in bigs))
    return {
        "small": SMALL,
        "big": label,
        "big_answer_megapixels": big_image.megapixels * big_scale * big_scale,
        "concurrency": CONCURRENCY,
        "baseline": base,
        "during_big": load,
        "big_requests": [{"latency_s": b.latency, "server_timing_s": b.timing, "start_s": b.start - t0, "end_s": b.end - t0} for b in bigs],
        "p99_ratio": (load["p99_s"] / base["p99_s"]) if load["p99_s"] and base["p99_s"] else None,
        "p50_ratio": (load["p50_s"] / base["p50_s"]) if load["p50_s"] and base["p50_s"] else None,
        "series_baseline": _series(baseline, t0),
        "series_loaded": _series(all_loaded, t0),
        "percentiles_during": percentiles([s.latency for s in during if s.ok], (50, 90, 99, 100)),
    }


def run(profile: Profile) -> dict:
    """Default settings first (what the target is judged on), then the same with two batches in
    flight (the GPU default) to see what it would cost small requests here."""
    with enhancer_server("enhancer-fairness") as server:
        result = asyncio.run(_measure(server, profile))
        result["served"] = server.served
    log(f"fairness: p99 {result['baseline']['p99_s']:.3f} s alone, {result['during_big']['p99_s']:.3f} s during -> ratio {result['p99_ratio']:.2f}")
    with enhancer_server("enhancer-fairness-in-flight2", batches_in_flight=2) as server:
        variant = asyncio.run(_measure(server, profile))
        variant["served"] = server.served
    log(f"fairness (batches_in_flight=2): p99 {variant['baseline']['p99_s']:.3f} s alone, {variant['during_big']['p99_s']:.3f} s during -> ratio {variant['p99_ratio']:.2f}")
    result["variant"] = {"label": "ENHANCER_BATCHES_IN_FLIGHT=2", **variant}
    return result


def run_upscale(profile: Profile, scale: int, variant_tile: int) -> dict:
    """A `scale`x job beside 1x requests (see the module docstring), server defaults plus the
    upscalers; then the same with the upscalers' tiles `variant_tile` px (ENHANCER_UPSCALE_TILE_SIZE),
    to show what the default's tile edge buys or costs small requests."""
    from benchmarks.drivers.upscale import read_back_settings, upscaler_dirs

    dirs, weights = upscaler_dirs()
    upscalers = ",".join(str(d) for d in dirs.values())
    with enhancer_server(f"enhancer-fairness-x{scale}", upscale_model_dirs=upscalers, log_level="info") as server:
        settings = read_back_settings(server)
        result = asyncio.run(_measure(server, profile, big_scale=scale))
    log(f"fairness ({scale}x job): p99 {result['baseline']['p99_s']:.3f} s alone, {result['during_big']['p99_s']:.3f} s during -> ratio {result['p99_ratio']:.2f}")
    with enhancer_server(f"enhancer-fairness-x{scale}-tiles{variant_tile}", upscale_model_dirs=upscalers,
                         upscale_tile_size=variant_tile, log_level="info") as server:  # fmt: skip
        variant_settings = read_back_settings(server)
        variant = asyncio.run(_measure(server, profile, big_scale=scale))
    log(f"fairness ({scale}x job, upscale tiles {variant_tile}): p99 {variant['baseline']['p99_s']:.3f} s alone, {variant['during_big']['p99_s']:.3f} s during -> ratio {variant['p99_ratio']:.2f}")
    width, height = BIG_UPSCALE[scale]
    return {
        "label": f"a {width}x{height} JPEG at ?scale={scale} (24 MP answer)", "weights": weights,
        "settings_read_back": settings, **result,
        "variant": {"label": f"ENHANCER_UPSCALE_TILE_SIZE={variant_tile}",
                    "settings_read_back": variant_settings, **variant},
    }  # fmt: skip


def run_x4(profile: Profile) -> dict:
    """The 4x job, and the same with 4x tiles as large as the restorer's (ENHANCER_UPSCALE_TILE_SIZE
    = ENHANCER_TILE_SIZE). `python -m benchmarks.run --only fairness_x4` (results/fairness_x4.json)."""
    from enhancer.config import Settings

    return run_upscale(profile, 4, Settings.model_fields["tile_size"].default)


def run_x2(profile: Profile) -> dict:
    """The 2x job, and the same with 2x tiles as large as the restorer's. `python -m benchmarks.run
    --only fairness_x2` (results/fairness_x2.json)."""
    from enhancer.config import Settings

    return run_upscale(profile, 2, Settings.model_fields["tile_size"].default)
