"""What solo tiles cost the request that comes second (issue 15, ENHANCER_SOLO_TILE_SIZE).

A photo that arrives alone is cut in solo tiles (1536 px on a CPU), which run faster than the
normal ones; a request that arrives while they run waits for the solo tile in progress. Per round,
against the server with its defaults and the same server with solo tiles off, alternating: the
12 MP photo is sent alone, and one second later a client starts sending 256x256 JPEGs one after
another until the photo's answer is back. Reported per server: the photo's end-to-end seconds, the
small requests' latency alone (before the rounds) and while the photo ran (median and worst), and
the server's memory high-water mark (VmHWM, reset before the photo is sent) over its idle RSS.

    python -m benchmarks.drivers.solo_wait --json benchmarks/results/solo_wait.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from pathlib import Path

from benchmarks.harness.common import REPO, log, machine_info, write_json
from benchmarks.harness.inputs import ensure_inputs, group
from benchmarks.harness.loadgen import LoadGenerator, Payload
from benchmarks.harness.server import enhancer_server, kernel_peak_rss, process_tree_rss

SMALL, BIG = "crop256", "mosaic_12mp"
SERVERS: dict[str, dict[str, object]] = {"defaults": {}, "solo-off": {"solo_tile_size": 0}}


def _latencies(samples) -> dict:
    values = sorted(s.latency for s in samples if s.ok)
    if not values:
        return {"count": 0}
    return {"count": len(values), "median_s": statistics.median(values), "max_s": values[-1]}


async def _round(server, small: list[Payload], big: Payload) -> dict:
    lg = LoadGenerator(server.url + "/upscale", small)
    big_lg = LoadGenerator(server.url + "/upscale", [big], params={"format": "png"})
    async with lg.client(2) as client, big_lg.client(1) as big_client:
        idle = process_tree_rss(server.pid)
        Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # the kernel's high-water mark starts again
        big_task = asyncio.create_task(big_lg.send(big_client, big))
        await asyncio.sleep(1.0)  # the photo is cut (alone) and running before anyone else comes
        stop = asyncio.Event()
        small_task = asyncio.create_task(lg.run_closed(client, 1, stop=stop))
        big_sample = await big_task
        stop.set()
        during = [s for s in await small_task if s.end <= big_sample.end]
    if not big_sample.ok:
        raise RuntimeError(f"the {BIG} request failed: {big_sample.status} {big_sample.error}")
    peak = kernel_peak_rss(server.pid)
    return {
        "big_s": big_sample.latency, "big_server_timing_s": big_sample.timing, "small_during": _latencies(during),
        "idle_rss_mib": idle / 2**20, "peak_minus_idle_mib": None if peak is None else (peak - idle) / 2**20,
    }  # fmt: skip


async def _alone(server, small: list[Payload], seconds: float) -> dict:
    lg = LoadGenerator(server.url + "/upscale", small)
    async with lg.client(2) as client:
        await lg.run_closed(client, 1, duration_s=2.0)  # warm the connection and the shapes
        return _latencies(await lg.run_closed(client, 1, duration_s=seconds))


def measure(rounds: int) -> dict:
    import contextlib

    small = [Payload.from_image(img) for img in group(SMALL)]
    big = Payload.from_image(ensure_inputs([BIG])[BIG])
    result: dict = {"machine": machine_info(), "servers": {}, "rounds": []}
    with contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(enhancer_server(f"enhancer-{name}", log_level="info", **settings))
                   for name, settings in SERVERS.items()}  # fmt: skip
        for name, server in servers.items():
            result["servers"][name] = {"settings": SERVERS[name], "served": server.served,
                                       "small_alone": asyncio.run(_alone(server, small, 8.0))}  # fmt: skip
            log(f"{name}: small alone {result['servers'][name]['small_alone']}")
        for r in range(rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            row = {}
            for name in order:
                row[name] = asyncio.run(_round(servers[name], small, big))
                log(f"round {r + 1} {name}: photo {row[name]['big_s']:.2f} s, small during {row[name]['small_during']}")
            result["rounds"].append(row)
    for name in SERVERS:
        big_s = [row[name]["big_s"] for row in result["rounds"]]
        worst = [row[name]["small_during"].get("max_s") for row in result["rounds"]]
        medians = [row[name]["small_during"].get("median_s") for row in result["rounds"]]
        peaks = [row[name]["peak_minus_idle_mib"] for row in result["rounds"] if row[name]["peak_minus_idle_mib"] is not None]
        result["servers"][name]["summary"] = {
            "big_s_median": statistics.median(big_s),
            "peak_minus_idle_mib_max": max(peaks) if peaks else None,
            "small_during_median_s": statistics.median([m for m in medians if m is not None]),
            "small_during_worst_s": max(w for w in worst if w is not None),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "solo_wait.json"))
    args = parser.parse_args()
    result = measure(args.rounds)
    result["load_average_at_end"] = list(os.getloadavg())
    write_json(Path(args.json), result)
    for name, server in result["servers"].items():
        log(f"{name}: {server['summary']}")
    log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
