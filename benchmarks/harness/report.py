"""Plots (PNG, matplotlib Agg) and a Markdown summary from the JSON files a run saved."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.harness.common import read_json  # noqa: E402

GiB = 2**30


def _load(results: Path, name: str) -> dict | None:
    path = results / f"{name}.json"
    return read_json(path) if path.exists() else None


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("**met**" if ok else "**missed**")


# -- plots ------------------------------------------------------------------------------------


def plot_concurrency(eff: dict, out: Path) -> list[Path]:
    sweep = eff["sweep"]
    levels = [r["concurrency"] for r in sweep]
    s = eff["summary"]
    proto = eff.get("prototype", [])
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(levels, [r["mp_per_s"] for r in sweep], "o-", label="enhancer serve (async, micro-batched)")
    if proto:
        ax.plot([r["concurrency"] for r in proto], [r["mp_per_s"] for r in proto], "s--", label="prototype-style sync Flask")
    ax.axhline(s["raw_mp_per_s"], color="k", ls=":", label=f"raw SavedModel in-process, batch {s['raw_batch_size']} (mean of before/after)")
    ax.axhspan(min(s["raw_mp_per_s_before"], s["raw_mp_per_s_after"]), max(s["raw_mp_per_s_before"], s["raw_mp_per_s_after"]),
               color="k", alpha=0.07, label="raw: before .. after the HTTP runs")
    if "batch1_e2e_mp_per_s_c8" in s:
        ax.plot([8], [s["batch1_e2e_mp_per_s_c8"]], "D", color="tab:green", label="enhancer serve, max batch 1")
    top = max([r["mp_per_s"] for r in sweep] + [r["mp_per_s"] for r in proto] + [s["raw_mp_per_s_before"], s["raw_mp_per_s_after"]])
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("concurrent requests (closed loop)")
    ax.set_ylabel("megapixels / s (image pixels)")
    ax.set_ylim(0, top * 1.15)
    ax.set_title(f"Throughput, {eff['images']} JPEG -> PNG")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax2 = ax.twinx()
    ax2.set_ylim(0, ax.get_ylim()[1] / eff["image_megapixels"])
    ax2.set_ylabel("requests / s")
    fig.tight_layout()
    paths.append(out / "throughput_vs_concurrency.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, style in (("p50_s", "o-"), ("p90_s", "^-"), ("p99_s", "s-")):
        ax.plot(levels, [r[key] for r in sweep], style, label=f"enhancer {key[:-2]}")
    if proto:
        ax.plot([r["concurrency"] for r in proto], [r["p99_s"] for r in proto], "x--", color="gray", label="prototype p99")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("concurrent requests (closed loop)")
    ax.set_ylabel("latency (s)")
    ax.set_title(f"Latency vs concurrency, {eff['images']}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "latency_vs_concurrency.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    if eff.get("open_loop"):
        ol = eff["open_loop"]
        fig, ax = plt.subplots(figsize=(7, 4.2))
        x = [r["offered_req_per_s"] for r in ol]
        for key, style in (("p50_s", "o-"), ("p90_s", "^-"), ("p99_s", "s-")):
            ax.plot(x, [r[key] for r in ol], style, label=key[:-2])
        ax.set_xlabel("offered load (Poisson arrivals, requests / s)")
        ax.set_ylabel("latency (s)")
        ax.set_title("Open loop: latency at a given request rate")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out / "open_loop_latency.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def plot_batching(bat: dict, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    series: dict[tuple[str, int], list[dict]] = {}
    for entry in bat["sweep"]:
        series.setdefault((entry["workload"], entry["concurrency"]), []).append(entry)
    for (workload, conc), entries in series.items():
        entries.sort(key=lambda e: e["max_batch_delay_ms"])
        xs = [e["p99_s"] * 1000 for e in entries]
        ys = [e["tiles_per_s"] for e in entries]
        ax.plot(xs, ys, "o-", label=f"{workload}, concurrency {conc}")
        for e, x, y in zip(entries, xs, ys):
            ax.annotate(f"{e['max_batch_delay_ms']:g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    a, b = bat["cost_model"]["a_ms"], bat["cost_model"]["b_ms"]
    ax.axhline(32 / ((a + 32 * b) / 1000), color="k", ls=":", lw=1, label="device limit, full batches of 32")
    ax.axhline(1 / ((a + b) / 1000), color="r", ls=":", lw=1, label="device limit, batches of 1")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("tiles / s through the model")
    ax.set_title(f"max_batch_delay_ms sweep (labels, ms); simulated device {a:g} ms + {b:g} ms/tile, max batch 32")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "batching_delay_sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_memory(mem: dict, out: Path) -> list[Path]:
    rows = mem["images"]
    mp = [r["megapixels"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(mp, [r["peak_rss_bytes"] / GiB for r in rows], "o-", label="peak RSS during the request")
    ax.plot(mp, [r["growth_bytes"] / GiB for r in rows], "s-", label="peak - idle RSS before it")
    fit = mem.get("growth_fit") or {}
    if fit:
        xs = [0, max(mp)]
        ax.plot(xs, [(fit["intercept_bytes"] + fit["bytes_per_megapixel"] * x) / GiB for x in xs], "k:", lw=1,
                label=f"linear fit: {fit['bytes_per_pixel']:.0f} B/pixel (R² {fit['r2']:.3f})")
    ax.axhline(3e9 / GiB, color="r", ls="--", lw=1, label="target: 3 GB")
    ax.set_xlabel("image megapixels")
    ax.set_ylabel("GiB")
    ax.set_title("Server memory while enhancing one image")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = [out / "memory_vs_pixels.png"]
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    big = rows[-1]
    if big.get("rss_curve"):
        fig, ax = plt.subplots(figsize=(7, 3.6))
        t = [p[0] for p in big["rss_curve"]]
        ax.plot(t, [p[1] / GiB for p in big["rss_curve"]])
        ax.axhline(3e9 / GiB, color="r", ls="--", lw=1)
        ax.set_xlabel("seconds since upload start")
        ax.set_ylabel("RSS (GiB)")
        ax.set_title(f"RSS while serving {big['image']} ({big['width']}x{big['height']})")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(out / "memory_timeline.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def plot_fairness(fair: dict, out: Path) -> Path:
    variants = [("server defaults", fair)] + ([(fair["variant"]["label"], fair["variant"])] if fair.get("variant") else [])
    fig, axes = plt.subplots(len(variants), 1, figsize=(7.5, 3.4 * len(variants)), squeeze=False, sharey=True)
    for ax, (title, v) in zip(axes[:, 0], variants):
        for key, color, label in (("series_baseline", "tab:blue", "alone"), ("series_loaded", "tab:orange", "with 24 MP running")):
            pts = [p for p in v[key] if p[2] == 200]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ".", color=color, ms=3, label=f"{v['small']} latency, {label}")
        for i, big in enumerate(v["big_requests"]):
            ax.axvspan(big["start_s"], big["end_s"], color="gray", alpha=0.15, label="24 MP request in flight" if i == 0 else None)
        ax.axhline(v["baseline"]["p99_s"], color="tab:blue", ls=":", lw=1, label="p99 alone")
        ax.axhline(v["during_big"]["p99_s"], color="tab:orange", ls=":", lw=1, label="p99 during 24 MP")
        ax.set_ylabel("latency (s)")
        ax.set_yscale("log")
        ax.set_title(f"Fairness: {v['small']} at concurrency {v['concurrency']}, {title} (p99 x{v['p99_ratio']:.2f})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    path = out / "fairness_timeline.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- summary ----------------------------------------------------------------------------------


def _tile_rate_mp(eff: dict, concurrency: int = 8) -> float:
    """Image MP/s implied by the tiles the model finished (server /metrics) during the windows.

    Round-robin makes concurrent requests finish together, in waves; a window then holds one
    wave more or less, so completions are lumpy while the model's tile rate is steady.
    """
    r = next(x for x in eff["sweep"] if x["concurrency"] == concurrency)
    sm = r["server_metrics"]
    tiles_per_image = eff["raw_before"]["tiles_per_image"]
    return sm["tiles"] / sm["wall_s"] / tiles_per_image * eff["image_megapixels"]


def build(results: Path) -> str:
    results.mkdir(parents=True, exist_ok=True)
    lines = ["# Benchmark summary (generated by `python -m benchmarks.run`)", ""]
    machine = _load(results, "machine")
    if machine:
        lines += [
            f"- date: {machine['date']}, profile `{machine.get('profile')}`, commit {machine.get('git_commit')}",
            f"- machine: {machine['cpu_model']}, {machine['logical_cpus']} logical CPUs, {machine.get('memory_gib')} GiB; "
            f"TensorFlow {machine['tensorflow']}, Python {machine['python']}",
            f"- load average at start {_f(machine['load_average_at_start'][0])}"
            + (f", at end {_f(machine['load_average_at_end'][0])}" if machine.get("load_average_at_end") else "")
            + f"; other heavy processes: {machine.get('other_heavy_processes') or 'none'}",
            "",
        ]

    eff = _load(results, "efficiency")
    if eff:
        plot_concurrency(eff, results)
        s = eff["summary"]
        lines += [
            "## 1. Server efficiency (512x512 JPEG -> PNG, concurrency 8, tile 512, max batch 4)", "",
            "| figure | value |", "|---|---|",
            f"| end-to-end | {s['e2e_mp_per_s_c8']:.3f} MP/s ({s['e2e_req_per_s_c8']:.2f} req/s) |",
            f"| raw SavedModel, same tiles, batch {s['raw_batch_size']} (before / after) | {s['raw_mp_per_s_before']:.3f} / {s['raw_mp_per_s_after']:.3f} MP/s |",
            f"| **efficiency** (target >= 0.9) | **{s['efficiency']:.3f}** {_verdict(s['efficiency'] >= 0.9)} |",
            f"| end-to-end from the model's tile rate (smoother: requests finish in round-robin waves) | "
            f"{_tile_rate_mp(eff):.3f} MP/s, efficiency {_tile_rate_mp(eff) / s['raw_mp_per_s']:.3f} |",
            "| raw SavedModel by batch size (mean of before/after) | "
            + ", ".join(f"batch {b}: {v:.3f} MP/s" for b, v in s.get("raw_mp_per_s_by_batch", {}).items()) + " |",
            f"| model busy (share of wall time the model thread ran a batch) | {_f(s['model_busy_fraction'], 3)} |",
            f"| mean batch: server / in-process | {_ms(s['server_batch_s'])} / {_ms(s['raw_batch_s'])} (x{_f(s['batch_slowdown'], 3)}) |",
            f"| server mean batch size | {_f(s['server_mean_batch_size'])} |",
            f"| host work at this rate (cores, single-threaded in-process timing) | "
            + ", ".join(f"{k} {v:.3f}" for k, v in s["host_cores"].items()) + " |",
            f"| server process CPU / client CPU (cores) | {_f(s['server_cpu_cores'])} / {_f(s['client_cpu_fraction'], 3)} |",
            "",
            "| concurrency | req/s | MP/s | p50 | p90 | p99 | errors | windows (stable) |", "|---|---|---|---|---|---|---|---|",
        ]
        for r in eff["sweep"]:
            lines.append(
                f"| {r['concurrency']} | {r['req_per_s']:.2f} | {r['mp_per_s']:.3f} | {_ms(r['p50_s'])} | {_ms(r['p90_s'])} | "
                f"{_ms(r['p99_s'])} | {sum(r['errors'].values())} | {r['windows']} ({'yes' if r['stable'] else 'no'}) |"
            )
        if eff.get("open_loop"):
            lines += ["", "Open loop (Poisson arrivals):", "",
                      "| offered req/s | achieved req/s | p50 | p90 | p99 | errors |", "|---|---|---|---|---|---|"]
            for r in eff["open_loop"]:
                lines.append(f"| {r['offered_req_per_s']:.2f} ({r['fraction_of_capacity']:.0%}) | {r['req_per_s']:.2f} | "
                             f"{_ms(r['p50_s'])} | {_ms(r['p90_s'])} | {_ms(r['p99_s'])} | {sum(r['errors'].values()) + r['client_skipped']} |")
        if "batch1_efficiency" in s:
            lines += ["", f"Same server with `ENHANCER_MAX_BATCH_SIZE=1`, concurrency 8: {s['batch1_e2e_mp_per_s_c8']:.3f} MP/s "
                      f"({s['batch1_req_per_s_c8']:.2f} req/s, p99 {_ms(s['batch1_p99_s_c8'])}); efficiency against the raw model "
                      f"at batch 1: {s['batch1_efficiency']:.3f}; model busy {_f(s['batch1_model_busy_fraction'], 3)}."]
        if "defaults_req_per_s_c8" in s:
            lines += ["", f"Same server with no settings (its own defaults on this device; mean batch "
                      f"{_f(s['defaults_mean_batch_size_c8'])}): concurrency 1 p50 {_ms(s['defaults_p50_s_c1'])} "
                      f"(x{_f(s['defaults_p50_ratio_c1'])} the pinned server's); concurrency 8 {s['defaults_req_per_s_c8']:.2f} req/s "
                      f"(x{_f(s['defaults_speedup_c8'])}), {s['defaults_mp_per_s_c8']:.3f} MP/s, p99 {_ms(s['defaults_p99_s_c8'])}."]
        lines += ["", "## 6. Against the prototype's way of serving (same run, 512x512)", "",
                  "| server | concurrency | req/s | p50 | p99 |", "|---|---|---|---|---|"]
        for r in eff["sweep"]:
            if r["concurrency"] in (1, 8):
                lines.append(f"| enhancer serve, tile 512, batch 4 | {r['concurrency']} | {r['req_per_s']:.2f} | {_ms(r['p50_s'])} | {_ms(r['p99_s'])} |")
        for r in eff.get("defaults", []):
            lines.append(f"| enhancer serve, own defaults | {r['concurrency']} | {r['req_per_s']:.2f} | {_ms(r['p50_s'])} | {_ms(r['p99_s'])} |")
        for r in eff.get("prototype", []):
            lines.append(f"| sync Flask, one request at a time | {r['concurrency']} | {r['req_per_s']:.2f} | {_ms(r['p50_s'])} | {_ms(r['p99_s'])} |")
        lines += [f"", f"Throughput at concurrency 8: x{_f(s['speedup_vs_prototype'])} the prototype's.", ""]

    bat = _load(results, "batching")
    if bat:
        plot_batching(bat, results)
        lines += ["## 2. Batching on the simulated device (concurrency 32)", "",
                  f"Cost model: batch of n tiles = {bat['cost_model']['a_ms']:g} ms + n x {bat['cost_model']['b_ms']:g} ms; "
                  f"its own ceiling for batch 32 vs 1 is x{bat['cost_model']['ceiling_ratio_batch32']:.2f}.", "",
                  "| workload | max batch 1: req/s (tiles/s) | max batch 32: req/s (tiles/s) | ratio | mean batch | p99 (b1 / b32) |",
                  "|---|---|---|---|---|---|"]
        for workload, t in bat["target"].items():
            b1, b32 = t["batch1"], t["batch32"]
            lines.append(
                f"| {workload} | {b1['req_per_s']:.2f} ({_f(b1['tiles_per_s'], 0)}) | {b32['req_per_s']:.2f} ({_f(b32['tiles_per_s'], 0)}) | "
                f"**x{_f(t['ratio'])}** {_verdict(t['ratio'] >= 10) if workload == 'device_bound' else ''} | "
                f"{_f(b32['server_metrics'].get('mean_batch_size'), 1)} | {_ms(b1['p99_s'])} / {_ms(b32['p99_s'])} |"
            )
        if bat.get("in_flight"):
            f = bat["in_flight"]["summary"]
            lines += ["", f"Batches in flight (device_bound, max batch 32, {len(bat['in_flight']['runs']['1'])} alternating runs each"
                      f"{', measured ' + bat['in_flight']['measured_at'] if bat['in_flight'].get('measured_at') else ''}): "
                      f"1: {f['1']['req_per_s']:.2f} req/s, model busy {f['1']['model_busy_fraction']:.2f}, p99 {_ms(f['1']['p99_s'])}; "
                      f"2: {f['2']['req_per_s']:.2f} req/s, model busy {f['2']['model_busy_fraction']:.2f}, p99 {_ms(f['2']['p99_s'])}; "
                      f"**x{f['ratio']:.2f}**."]
        lines += ["", "Delay sweep (max batch 32):", "",
                  "| workload | concurrency | max_batch_delay_ms | req/s | tiles/s | mean batch | p50 | p99 |", "|---|---|---|---|---|---|---|---|"]
        for e in bat["sweep"]:
            lines.append(f"| {e['workload']} | {e['concurrency']} | {e['max_batch_delay_ms']:g} | {e['req_per_s']:.2f} | {_f(e['tiles_per_s'], 0)} | "
                         f"{_f(e['server_metrics'].get('mean_batch_size'), 1)} | {_ms(e['p50_s'])} | {_ms(e['p99_s'])} |")
        lines.append("")

    fair = _load(results, "fairness")
    if fair:
        plot_fairness(fair, results)
        b, d = fair["baseline"], fair["during_big"]
        lines += ["## 3. Fairness (256x256 at concurrency 4, with and without a 24 MP image in flight)", "",
                  "| | requests | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|",
                  f"| alone | {b['ok']} | {_ms(b['p50_s'])} | {_ms(b['p90_s'])} | {_ms(b['p99_s'])} | {_ms(b['latency_max_s'])} |",
                  f"| during 24 MP | {d['ok']} | {_ms(d['p50_s'])} | {_ms(d['p90_s'])} | {_ms(d['p99_s'])} | {_ms(d['latency_max_s'])} |",
                  "", f"p99 ratio: **x{_f(fair['p99_ratio'])}** (target <= 3) {_verdict(fair['p99_ratio'] <= 3)}; "
                  f"24 MP request(s) took " + ", ".join(_ms(x['latency_s']) for x in fair["big_requests"]) + ".", ""]
        if fair.get("variant"):
            v = fair["variant"]
            lines += [f"With `{v['label']}` (same run):", "",
                      "| | requests | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|",
                      f"| alone | {v['baseline']['ok']} | {_ms(v['baseline']['p50_s'])} | {_ms(v['baseline']['p90_s'])} | {_ms(v['baseline']['p99_s'])} | {_ms(v['baseline']['latency_max_s'])} |",
                      f"| during 24 MP | {v['during_big']['ok']} | {_ms(v['during_big']['p50_s'])} | {_ms(v['during_big']['p90_s'])} | {_ms(v['during_big']['p99_s'])} | {_ms(v['during_big']['latency_max_s'])} |",
                      "", f"p99 ratio x{_f(v['p99_ratio'])}; 24 MP request(s) took " + ", ".join(_ms(x['latency_s']) for x in v["big_requests"]) + ".", ""]

    mem = _load(results, "memory")
    if mem:
        plot_memory(mem, results)
        lines += ["## 4. Memory (peak RSS of the server process while enhancing one image)", "",
                  "| image | MP | tiles | idle RSS | peak RSS | growth | latency |", "|---|---|---|---|---|---|---|"]
        for r in mem["images"]:
            lines.append(f"| {r['width']}x{r['height']} | {r['megapixels']:.1f} | {r['tiles']} | {r['idle_rss_bytes'] / GiB:.2f} GiB | "
                         f"{r['peak_rss_bytes'] / GiB:.2f} GiB | {r['growth_bytes'] / GiB:.2f} GiB | {_ms(r['latency_s'])} |")
        big = mem["images"][-1]
        fit = mem.get("growth_fit") or {}
        lines += ["", f"Largest image: peak {big['peak_rss_bytes'] / 1e9:.2f} GB (target <= 3 GB) "
                  f"{_verdict(big['peak_rss_bytes'] <= 3e9) if big['megapixels'] >= 47 else '(not the 48 MP image: quick profile)'}; "
                  + (f"growth fit {fit['bytes_per_pixel']:.0f} bytes/pixel + {fit['intercept_bytes'] / 2**20:.0f} MiB, R² {fit['r2']:.4f}." if fit else ""), ""]

    til = _load(results, "tiling")
    if til:
        lines += ["## 5. Tiling cost (tile 512, overlap 32, batch 4 vs one whole-image pass)", "",
                  "| image | tiles | waste | whole | tiled | tiled / whole | PSNR tiled vs whole | interior PSNR |", "|---|---|---|---|---|---|---|---|"]
        for r in til["images"]:
            lines.append(f"| {r['width']}x{r['height']} | {r['tiles']} x {r['tile_shape'][0]}x{r['tile_shape'][1]} | {r['waste_ratio']:.2f} | "
                         f"{_ms(r['whole_s'])} | {_ms(r['tiled_s'])} | {r['tiled_over_whole']:.2f} | {r['psnr_db']:.1f} dB | {r['psnr_interior_db']:.1f} dB |")
        lines.append("")

    text = "\n".join(lines) + "\n"
    (results / "summary.md").write_text(text)
    return text
