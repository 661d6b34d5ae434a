"""Run every benchmark (or some), save raw JSON under benchmarks/results/, draw the plots and
write benchmarks/results/summary.md.

    python -m benchmarks.run --quick            # smoke run of everything, ~5-8 min
    python -m benchmarks.run --full             # the RESULTS.md figures, ~30 min on 2 cores
    python -m benchmarks.run --full --only fairness,memory
    python -m benchmarks.run --report-only      # redraw plots/summary from saved JSON

Measure on an otherwise idle machine: the run refuses to start while a training or evaluation
job is running (override with --allow-busy; the load is recorded either way).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

from benchmarks.harness.common import RESULTS_DIR, log, machine_info, other_heavy_processes, write_json
from benchmarks.harness.profiles import PROFILES

#: name -> module with `run(profile) -> dict`, saved as results/<name>.json; run in this order
#: (in-process measurements first, the simulated device, then the long soak last).
BENCHMARKS = {
    "tiling": "benchmarks.drivers.tiling",
    "tile_size": "benchmarks.drivers.tile_size",
    "efficiency": "benchmarks.drivers.efficiency",
    "fairness": "benchmarks.drivers.fairness",
    "fairness_x4": "benchmarks.drivers.fairness_x4",
    "fairness_x2": "benchmarks.drivers.fairness_x2",
    "memory": "benchmarks.drivers.memory",
    "upscale": "benchmarks.drivers.upscale",
    "batching": "benchmarks.drivers.batching",
    "soak": "benchmarks.drivers.soak",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="short windows, fewer levels (default)")
    mode.add_argument("--full", action="store_true", help="the full method; what RESULTS.md reports")
    mode.add_argument("--report-only", action="store_true", help="only redraw plots and summary.md")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="where JSON, plots and summary go")
    parser.add_argument("--allow-busy", action="store_true", help="measure even if training/evaluation runs")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="MINUTES",
                        help="first wait up to MINUTES for training/evaluation to end and the load average "
                        "to fall below 0.7 (then measure anyway, recording the load)")
    parser.add_argument("--server-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for every enhancer server the benchmarks start, unless the benchmark sets it "
                        "itself (e.g. precision=float32); the servers' read-back settings record it")
    args = parser.parse_args(argv)
    from benchmarks.harness import server

    for item in args.server_setting:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--server-setting takes NAME=VALUE, got {item!r}")
        server.SERVER_SETTINGS[name.strip().lower()] = value.strip()

    from pathlib import Path

    results = Path(args.results)
    if not args.report_only:
        profile = PROFILES["full" if args.full else "quick"]
        names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
        unknown = set(names) - set(BENCHMARKS)
        if unknown:
            parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {list(BENCHMARKS)}")
        if args.wait_idle > 0:
            _wait_idle(args.wait_idle)
            args.allow_busy = True
        busy = other_heavy_processes()
        if busy and not args.allow_busy:
            print("refusing to measure while these run (numbers would be meaningless):\n  " + "\n  ".join(busy)
                  + "\nwait for them, or pass --allow-busy", file=sys.stderr)
            return 2
        info = machine_info()
        info["profile"] = profile.name
        info["server_settings"] = dict(server.SERVER_SETTINGS)
        started = time.perf_counter()
        log(f"profile {profile.name}: {', '.join(names)}; load average {info['load_average_at_start']}")
        write_json(results / "machine.json", info)
        for name in names:
            log(f"=== {name} ===")
            t = time.perf_counter()
            busy_before = other_heavy_processes()
            module = importlib.import_module(BENCHMARKS[name])
            data = module.run(profile)
            # a training job started mid-run would make this benchmark's numbers meaningless
            data["heavy_processes_before_after"] = [busy_before, other_heavy_processes()]
            data["load_average_after"] = list(os.getloadavg())
            if any(data["heavy_processes_before_after"]):
                log(f"WARNING: other heavy processes ran around {name}: {data['heavy_processes_before_after']}")
            data["benchmark"] = name
            data["profile"] = profile.name
            data["elapsed_s"] = time.perf_counter() - t
            data["measured_at"] = info["date"]
            data["machine"] = info
            write_json(results / f"{name}.json", data)
            log(f"=== {name} done in {data['elapsed_s']:.0f} s ===")
        info["elapsed_s"] = time.perf_counter() - started
        info["load_average_at_end"] = list(os.getloadavg())
        info["other_heavy_processes_at_end"] = other_heavy_processes()
        write_json(results / "machine.json", info)

    from benchmarks.harness import report

    summary = report.build(results)
    print(summary)
    return 0


def _wait_idle(minutes: float) -> None:
    deadline = time.monotonic() + minutes * 60
    while time.monotonic() < deadline:
        busy, load = other_heavy_processes(), os.getloadavg()[0]
        if not busy and load < 0.7:
            log(f"machine idle (load average {load:.2f}); starting")
            return
        log(f"waiting for an idle machine: load average {load:.2f}, busy: {busy or 'none'}")
        time.sleep(60)
    log("gave up waiting for an idle machine; measuring anyway (the load is recorded)")


if __name__ == "__main__":
    sys.exit(main())
