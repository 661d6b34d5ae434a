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

5. As a user sees it (issue 15; `user_view`, also alone: `python -m benchmarks.drivers.efficiency
   --user-view`): `enhancer serve` with no settings beside a raw-model worker
   (benchmarks/baselines/raw_user.py) in the same minutes, alternating: raw on the 512x512 inputs (whole
   images and the server's own tiles, interleaved image by image), then the server at concurrency
   8 on the same files, several rounds; then the 12 MP photo alone, raw (whole, tiles) and one
   request, alternating. Two ratios each: end-to-end vs the raw model on the server's tiles, and
   vs the raw model on the whole image at the same precision (the worker resolves the precision
   from the same defaults; both are recorded). The server's settings are read back from its
   start-up log line and /readyz; the processor's name and flags from /proc/cpuinfo.
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
        upscale_model_dirs="none",  # the restorer alone: the pinned overlap is below the 4x model's reach
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
    with enhancer_server("enhancer-batch1", tile_size=TILE_SIZE, tile_overlap=overlap, max_batch_size=1,
                         upscale_model_dirs="none") as server:
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
    result["user_view"] = user_view(profile)
    return result


def cpu_facts() -> dict:
    """The processor's name and its flags (/proc/cpuinfo), with the ones issue 15 turns on named."""
    import platform

    from benchmarks.harness.common import cpu_model

    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx_vnni")
    return {"cpu_model": cpu_model(), "machine": platform.machine(), "has": {f: f in flags for f in wanted}, "flags": flags}


class RawWorker:
    """benchmarks.baselines.raw_user in a child process, asked for one measurement at a time."""

    def __init__(self) -> None:
        log("starting the raw-model worker")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.baselines.raw_user"], cwd=REPO, env=child_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self._read()  # {"ready": true} once the model is loaded and warm

    def _read(self) -> dict:
        import json

        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the raw-model worker exited ({self.proc.poll()})")
            try:
                return json.loads(line)
            except ValueError:
                continue  # a library's stray print

    def ask(self, cmd: str, **kwargs) -> dict:
        import json

        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write('{"cmd": "quit"}\n')
            self.proc.stdin.flush()
            self.proc.wait(60)
        except Exception:
            self.proc.kill()


def _settings_line(log_path: Path) -> str | None:
    for line in log_path.read_text(errors="replace").splitlines():
        if "inference on " in line:
            return line[line.index("inference on ") :]
    return None


#: The servers the user view alternates: the defaults, and the tiling before issue 15 (mirrored
#: context as wide as the overlap, bucketed tile sizes) with every other setting the same.
USER_VIEW_SERVERS: dict[str, dict[str, object]] = {
    "defaults": {},
    "before": {"border_context": 48, "tile_buckets": "true"},
}
#: `--against float32`: the defaults beside the same server held to float32, on a CPU where the
#: defaults run bfloat16 (what `auto` buys end to end; the raw worker stays at the defaults' precision).
FLOAT32_SERVERS: dict[str, dict[str, object]] = {"defaults": {}, "float32": {"precision": "float32"}}
#: `--against overlap64`: the defaults (each model's own overlap, 48 for dejpeg-q) beside the overlap
#: every model had while it followed the largest reach among the served models (64, the upscalers').
OVERLAP64_SERVERS: dict[str, dict[str, object]] = {"defaults": {}, "overlap64": {"tile_overlap": 64}}
#: `--against solo-off`: the defaults beside the same server without solo tiles (a lone image cut in
#: normal tiles, as before they existed).
SOLO_OFF_SERVERS: dict[str, dict[str, object]] = {"defaults": {}, "solo-off": {"solo_tile_size": 0}}
#: `--against hugepages`: the defaults beside the same server with numpy's huge-page advice back on
#: (enhancer.host_memory; an `env` entry is passed as environment variables, not settings).
HUGEPAGES_SERVERS: dict[str, dict[str, object]] = {"defaults": {}, "hugepages": {"env": {"NUMPY_MADVISE_HUGEPAGE": "1"}}}
AGAINST = {
    "before": USER_VIEW_SERVERS, "float32": FLOAT32_SERVERS, "overlap64": OVERLAP64_SERVERS, "solo-off": SOLO_OFF_SERVERS,
    "hugepages": HUGEPAGES_SERVERS,
}  # fmt: skip


def user_view(profile: Profile, rounds: int = 3, big_rounds: int = 2, servers=USER_VIEW_SERVERS) -> dict:
    """Issue 15's two ratios for `enhancer serve` as a user starts it (see the module docstring)."""
    import contextlib

    import httpx

    from benchmarks.harness.common import machine_info
    from benchmarks.harness.inputs import ensure_inputs

    small = [Payload.from_image(img) for img in group(IMAGES)]
    big_image = ensure_inputs(["mosaic_12mp"])["mosaic_12mp"]
    big = Payload.from_image(big_image)
    result: dict = {"machine": machine_info(), "cpu": cpu_facts(), "servers": {}, "rounds": [], "big_rounds": []}
    worker = RawWorker()
    try:
        result["raw_worker"] = worker.ask("info")
        with contextlib.ExitStack() as stack:
            started = {}
            for name, settings in servers.items():
                # log level info only so the start-up line with the resolved settings is written
                server = stack.enter_context(enhancer_server(f"enhancer-user-{name}", log_level="info", **settings))
                started[name] = server
                result["servers"][name] = {
                    "settings_set": {f"ENHANCER_{k.upper()}": str(v) for k, v in settings.items()},
                    "startup_s": server.startup_s,
                    "settings_line": _settings_line(server.log_path),
                    "readyz": httpx.get(server.url + "/readyz", timeout=10).json(),
                }
                log(f"{name}: {result['servers'][name]['settings_line']}")
            small_lg = {
                name: LoadGenerator(s.url + "/upscale", small, metrics_url=s.url + "/metrics", server_pid=s.pid)
                for name, s in started.items()
            }
            big_lg = {name: LoadGenerator(s.url + "/upscale", [big], server_pid=s.pid) for name, s in started.items()}
            names = list(started)
            for r in range(rounds):
                entry = {"raw": worker.ask("small", seconds=2 * profile.window_s * 3)}
                log(f"round {r + 1}: raw whole {entry['raw']['whole_mp_per_s']:.3f} MP/s, "
                    f"server's tiles {entry['raw']['tiles_mp_per_s']:.3f} MP/s")  # fmt: skip
                for name in names[r % len(names):] + names[: r % len(names)]:
                    c8 = asyncio.run(small_lg[name].closed_loop(
                        8, window_s=profile.window_s, min_requests=profile.min_requests, max_windows=3))  # fmt: skip
                    log(f"round {r + 1}: {name} at concurrency 8 {c8['mp_per_s']:.3f} MP/s")
                    entry[name] = c8
                result["rounds"].append(entry)
            for r in range(big_rounds):
                entry = {"raw": worker.ask("big")}
                log(f"12 MP round {r + 1}: raw whole {entry['raw'].get('whole_s')} s, tiles {entry['raw'].get('tiles_s')} s")
                for name in names[r % len(names):] + names[: r % len(names)]:
                    lg = big_lg[name]
                    cpu0 = lg._server_cpu()
                    sample = asyncio.run(lg.one_request(big))
                    cpu1 = lg._server_cpu()
                    log(f"12 MP round {r + 1}: {name} end to end {sample.latency:.2f} s (status {sample.status})")
                    entry[name] = {
                        "latency_s": sample.latency, "status": sample.status, "server_timing": sample.timing,
                        "server_cpu_s": (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None,
                    }  # fmt: skip
                result["big_rounds"].append(entry)
    finally:
        worker.close()
    result["summary"] = {name: summarize_user_view(result, name) for name in servers}
    return result


def summarize_user_view(result: dict, name: str) -> dict:
    """The ratios for one of the servers; "vs raw tiles" is only meaningful for the defaults, whose
    tiles the raw worker cuts."""
    mean = lambda v: sum(v) / len(v) if v else None  # noqa: E731
    rounds = result["rounds"]
    e2e = [r[name]["mp_per_s"] for r in rounds]
    whole = [r["raw"]["whole_mp_per_s"] for r in rounds]
    tiles = [r["raw"]["tiles_mp_per_s"] for r in rounds]
    server_cpu = [r[name]["server_cpu_cores"] / r[name]["mp_per_s"] for r in rounds if r[name].get("server_cpu_cores")]
    summary = {
        "e2e_mp_per_s_c8": e2e,
        "raw_whole_mp_per_s": whole,
        "raw_tiles_mp_per_s": tiles,
        "ratio_vs_raw_tiles_per_round": [a / b for a, b in zip(e2e, tiles)],
        "ratio_vs_raw_whole_per_round": [a / b for a, b in zip(e2e, whole)],
        "ratio_vs_raw_tiles": mean(e2e) / mean(tiles),
        "ratio_vs_raw_whole": mean(e2e) / mean(whole),
        # CPU seconds per megapixel (server process vs raw worker): what each way costs the machine,
        # less distorted than wall time by how the scheduler shares a loaded machine between processes
        "server_cpu_s_per_mp_c8": server_cpu,
        "raw_whole_cpu_s_per_mp": [r["raw"]["whole_cpu_s_per_mp"] for r in rounds],
        "raw_tiles_cpu_s_per_mp": [r["raw"]["tiles_cpu_s_per_mp"] for r in rounds],
        "model_busy_fraction_c8": [r[name]["server_metrics"].get("model_busy_fraction") for r in rounds],
        "server_timing_mean_s_c8": [r[name].get("server_timing_mean_s") for r in rounds],
        "server_cpu_cores_c8": [r[name].get("server_cpu_cores") for r in rounds],
        "p50_s_c8": [r[name].get("p50_s") for r in rounds],
        "p99_s_c8": [r[name].get("p99_s") for r in rounds],
    }
    if server_cpu:
        summary["cpu_ratio_vs_raw_tiles"] = mean(summary["raw_tiles_cpu_s_per_mp"]) / mean(server_cpu)
        summary["cpu_ratio_vs_raw_whole"] = mean(summary["raw_whole_cpu_s_per_mp"]) / mean(server_cpu)
    ok = [b for b in result["big_rounds"] if b[name]["status"] == 200]
    big_e2e = [b[name]["latency_s"] for b in ok]
    big_whole = [b["raw"]["whole_s"] for b in ok if "whole_s" in b["raw"]]
    big_tiles = [b["raw"]["tiles_s"] for b in ok if "tiles_s" in b["raw"]]
    summary.update(
        big_e2e_s=big_e2e, big_raw_whole_s=big_whole, big_raw_tiles_s=big_tiles,
        big_time_ratio_vs_raw_whole=(mean(big_e2e) / mean(big_whole)) if big_whole and big_e2e else None,
        big_time_ratio_vs_raw_tiles=(mean(big_e2e) / mean(big_tiles)) if big_tiles and big_e2e else None,
        big_server_timing=[b[name]["server_timing"] for b in ok],
        big_server_cpu_s=[b[name]["server_cpu_s"] for b in ok],
        big_raw_whole_cpu_s=[b["raw"].get("whole_cpu_s") for b in ok],
        big_raw_tiles_cpu_s=[b["raw"].get("tiles_cpu_s") for b in ok],
    )  # fmt: skip
    cpu_e2e = [b[name]["server_cpu_s"] for b in ok if b[name]["server_cpu_s"]]
    cpu_whole = [b["raw"]["whole_cpu_s"] for b in ok if b["raw"].get("whole_cpu_s")]
    cpu_tiles = [b["raw"]["tiles_cpu_s"] for b in ok if b["raw"].get("tiles_cpu_s")]
    if cpu_e2e and cpu_whole:
        summary["big_cpu_ratio_vs_raw_whole"] = mean(cpu_e2e) / mean(cpu_whole)
    if cpu_e2e and cpu_tiles:
        summary["big_cpu_ratio_vs_raw_tiles"] = mean(cpu_e2e) / mean(cpu_tiles)
    return summary


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


def main() -> None:
    import argparse

    from benchmarks.harness.common import RESULTS_DIR, write_json
    from benchmarks.harness.profiles import PROFILES

    parser = argparse.ArgumentParser(description="Issue 15's end-to-end ratios (the user view) alone.")
    parser.add_argument("--user-view", action="store_true", required=True)
    parser.add_argument("--profile", default="full", choices=sorted(PROFILES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--big-rounds", type=int, default=2, help="rounds of the 12 MP photo alone")
    parser.add_argument("--json", default=str(RESULTS_DIR / "efficiency_user.json"))
    parser.add_argument("--against", choices=sorted(AGAINST), default="before",
                        help="the second server: the tiling before issue 15, the defaults held to float32, "
                        "every model's overlap at 64, no solo tiles, or numpy's huge-page advice on")
    args = parser.parse_args()
    import os

    servers = AGAINST[args.against]
    data = user_view(PROFILES[args.profile], rounds=args.rounds, big_rounds=args.big_rounds, servers=servers)
    data["load_average_at_end"] = list(os.getloadavg())
    write_json(Path(args.json), data)
    for name, summary in data["summary"].items():
        log(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items() if "ratio" in k and "round" not in k and v is not None))
    log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
