"""Targets 1 and 6, plus the concurrency sweep and the open-loop mode, all on 512x512 JPEGs.

1. Raw limit: the SavedModel in-process on the server's own tiles and batch shapes
   (benchmarks/baselines/raw_model.py, in a fresh process), before and after the HTTP runs.
2. `enhancer serve` at tile 512 and max batch 4 (the settings the targets were set against; the
   raw run and the prototype use the same), overlap 32 or the model's reach where that is more
   (`pinned_overlap`): closed-loop windows at each concurrency level, then
   open-loop Poisson load at fractions of the concurrency-8 throughput.
3. The prototype-style synchronous Flask server (benchmarks/baselines/proto_server.py), same model and
   tiling, at concurrency 8 (and 1), in the same run.
4. The same server at max batch 1, and with no settings at all (its own defaults for the device it
   finds: on a CPU a 576 tile, so a 512x512 upload is one tile, and batch 1), at concurrency 1 and 8.

Efficiency = end-to-end MP/s at concurrency 8 / raw MP/s at the batch size the server used.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from benchmarks.harness.common import OUT_DIR, REPO, log, read_json
from benchmarks.harness.inputs import group
from benchmarks.harness.loadgen import LoadGenerator, Payload
from benchmarks.harness.profiles import Profile
from benchmarks.harness.server import child_env, enhancer_server, prototype_server

IMAGES = "crop512"
#: Pinned settings (the CPU defaults until the tile became 576 and the batch 1), so the raw run,
#: the prototype and the server all cut the same tiles and batches.
TILE_SIZE, TILE_OVERLAP, MAX_BATCH = 512, 32, 4


def pinned_overlap() -> int:
    """TILE_OVERLAP, or the served default model's reach rounded up to its size multiple where
    that is more (the server refuses an overlap below the reach: dejpeg-q's is 42 px)."""
    from enhancer.config import Settings
    from enhancer.models.contract import read_spec

    spec = read_spec(Settings().model_dir)
    return max(TILE_OVERLAP, -(-spec.reach // spec.size_multiple) * spec.size_multiple)


def raw_model(profile: Profile, tag: str, overlap: int) -> dict:
    out = OUT_DIR / f"raw_model_{tag}.json"
    cmd = [
        sys.executable, "-m", "benchmarks.baselines.raw_model", "--images", IMAGES,
        "--batch-sizes", ",".join(str(b) for b in sorted({1, 2, MAX_BATCH})),
        "--tile-size", str(TILE_SIZE), "--tile-overlap", str(overlap),
        "--min-seconds", str(profile.raw_min_seconds / 2), "--repeats", "2", "--json", str(out),
    ]
    log(f"raw model ({tag})")
    subprocess.run(cmd, cwd=REPO, check=True, env=child_env())
    return read_json(out)


def _raw_at(raw: dict, batch: int) -> dict:
    """Mean over the repeats (batch sizes alternate: 1, 2, 4, 1, 2, 4) of one batch size."""
    entries = [b for b in raw["batches"] if b["batch_size"] == batch]
    return {key: sum(e[key] for e in entries) / len(entries) for key in ("mp_per_s", "batch_s_median", "tiles_per_s")}


def run(profile: Profile) -> dict:
    payloads = [Payload.from_image(img) for img in group(IMAGES)]
    window = dict(window_s=profile.window_s, min_requests=profile.min_requests, max_windows=profile.max_windows)
    result: dict = {"images": IMAGES, "image_megapixels": payloads[0].megapixels, "profile": profile.name}

    overlap = pinned_overlap()  # the raw run, the prototype and the servers cut the same tiles
    result["raw_before"] = raw_model(profile, "before", overlap)

    server = enhancer_server(
        "enhancer-efficiency", tile_size=TILE_SIZE, tile_overlap=overlap, max_batch_size=MAX_BATCH,
    )
    with server:
        result["server_startup_s"] = server.startup_s
        result["served"] = server.served
        lg = LoadGenerator(server.url + "/upscale", payloads, metrics_url=server.url + "/metrics", server_pid=server.pid)
        result["sweep"] = asyncio.run(lg.sweep(list(profile.levels), **window))
        at8 = next((r for r in result["sweep"] if r["concurrency"] == 8), result["sweep"][-1])
        capacity = at8["req_per_s"]
        result["open_loop"] = []
        for fraction in profile.open_loop_fractions:
            rate = fraction * capacity
            log(f"open loop at {rate:.2f} req/s ({fraction:.0%} of the concurrency-8 throughput)")
            entry = asyncio.run(lg.open_loop(rate, duration_s=profile.open_loop_s, seed=int(fraction * 100)))
            entry["fraction_of_capacity"] = fraction
            log(f"  -> {entry['req_per_s']:.2f} req/s, p50 {entry['p50_s']}, p99 {entry['p99_s']}, errors {entry['errors']}")
            result["open_loop"].append(entry)

    result["raw_after"] = raw_model(profile, "after", overlap)

    with prototype_server("prototype", tile_size=TILE_SIZE, tile_overlap=overlap, batch_size=MAX_BATCH) as proto:
        result["prototype_startup_s"] = proto.startup_s
        result["prototype_served"] = proto.served
        lg = LoadGenerator(proto.url + "/upscale", payloads, server_pid=proto.pid)
        result["prototype"] = asyncio.run(lg.sweep([1, 8], **window))

    # The same server with max_batch_size=1: on a CPU a bigger batch need not be faster per tile.
    with enhancer_server("enhancer-batch1", tile_size=TILE_SIZE, tile_overlap=overlap, max_batch_size=1) as server:
        lg = LoadGenerator(server.url + "/upscale", payloads, metrics_url=server.url + "/metrics", server_pid=server.pid)
        log("enhancer serve with max_batch_size=1, concurrency 8")
        result["batch1_c8"] = asyncio.run(lg.closed_loop(8, **window))
        result["batch1_served"] = server.served

    # The server as a user starts it: every setting left to the defaults for this device.
    with enhancer_server("enhancer-defaults") as server:
        lg = LoadGenerator(server.url + "/upscale", payloads, metrics_url=server.url + "/metrics", server_pid=server.pid)
        log("enhancer serve with its own defaults, concurrency 1 and 8")
        result["defaults"] = asyncio.run(lg.sweep([1, 8], **window))
        result["defaults_served"] = server.served

    result["summary"] = summarize(result)
    return result


def summarize(result: dict) -> dict:
    at8 = next(r for r in result["sweep"] if r["concurrency"] == 8)
    sm = at8["server_metrics"]
    batch = round(sm.get("mean_batch_size") or MAX_BATCH)
    batch = max(b for b in (1, 2, MAX_BATCH) if b <= batch)
    raws = [_raw_at(result[k], batch) for k in ("raw_before", "raw_after")]
    raw_mp = sum(r["mp_per_s"] for r in raws) / 2
    raw_batch_s = sum(r["batch_s_median"] for r in raws) / 2
    host = result["raw_before"].get("host_stage_s_per_image", {})
    rps = at8["req_per_s"]
    proto8 = next(r for r in result["prototype"] if r["concurrency"] == 8)
    summary = {
        "e2e_mp_per_s_c8": at8["mp_per_s"],
        "e2e_req_per_s_c8": rps,
        "raw_batch_size": batch,
        "raw_mp_per_s_before": raws[0]["mp_per_s"],
        "raw_mp_per_s_after": raws[1]["mp_per_s"],
        "raw_mp_per_s": raw_mp,
        # the model alone at every batch size, before and after averaged: does batching pay on this device?
        "raw_mp_per_s_by_batch": {
            str(b): sum(_raw_at(result[k], b)["mp_per_s"] for k in ("raw_before", "raw_after")) / 2 for b in (1, 2, MAX_BATCH)
        },
        "efficiency": at8["mp_per_s"] / raw_mp,
        "efficiency_vs_best_raw": at8["mp_per_s"] / max(r["mp_per_s"] for r in raws),
        "model_busy_fraction": sm.get("model_busy_fraction"),
        "server_mean_batch_size": sm.get("mean_batch_size"),
        "server_batch_s": sm.get("mean_batch_infer_s"),
        "raw_batch_s": raw_batch_s,
        "batch_slowdown": (sm["mean_batch_infer_s"] / raw_batch_s) if sm.get("mean_batch_infer_s") else None,
        # cores the per-image host work needs at this request rate (measured single-threaded in-process)
        "host_cores": {k: v * rps for k, v in host.items() if k != "encode_jpeg"},
        "server_cpu_cores": at8.get("server_cpu_cores"),
        "client_cpu_fraction": at8.get("client_cpu_fraction"),
        "server_timing_mean_s": at8["server_timing_mean_s"],
        "prototype_req_per_s_c8": proto8["req_per_s"],
        "prototype_p99_s_c8": proto8["p99_s"],
        "server_req_per_s_c8": rps,
        "server_p99_s_c8": at8["p99_s"],
        "speedup_vs_prototype": rps / proto8["req_per_s"] if proto8["req_per_s"] else None,
    }
    if "batch1_c8" in result:
        b1 = result["batch1_c8"]
        raw1 = summary["raw_mp_per_s_by_batch"]["1"]
        summary.update(
            batch1_e2e_mp_per_s_c8=b1["mp_per_s"], batch1_req_per_s_c8=b1["req_per_s"], batch1_p99_s_c8=b1["p99_s"],
            batch1_efficiency=b1["mp_per_s"] / raw1, batch1_model_busy_fraction=b1["server_metrics"].get("model_busy_fraction"),
        )
    if "defaults" in result:
        d1, d8 = (next(r for r in result["defaults"] if r["concurrency"] == c) for c in (1, 8))
        pinned1 = next((r for r in result["sweep"] if r["concurrency"] == 1), None)
        summary.update(
            defaults_req_per_s_c1=d1["req_per_s"], defaults_p50_s_c1=d1["p50_s"],
            defaults_req_per_s_c8=d8["req_per_s"], defaults_mp_per_s_c8=d8["mp_per_s"], defaults_p99_s_c8=d8["p99_s"],
            defaults_mean_batch_size_c8=d8["server_metrics"].get("mean_batch_size"),
            defaults_speedup_c8=d8["req_per_s"] / rps if rps else None,
            defaults_p50_ratio_c1=(d1["p50_s"] / pinned1["p50_s"]) if pinned1 and pinned1["p50_s"] else None,
        )
    return summary
