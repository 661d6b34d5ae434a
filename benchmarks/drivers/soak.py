"""Soak test (not in CI): many requests against a real `enhancer serve`; memory must not creep.

Issue 5's criterion: after 2000 requests the server's RSS is within 10 % of its RSS after warm-up.
The mix is what a public endpoint sees: photos of many sizes and formats (grey, alpha, 16-bit,
EXIF-rotated), plus bad inputs that end in 4xx (truncated files, text, a pixel bomb header, the
wrong field name). Requests run `--concurrency` at a time. Every answer must be 200 or the expected
4xx; a 5xx fails the run.

    python -m benchmarks.drivers.soak                       # 2000 requests after 200 warm-up ones
    python -m benchmarks.drivers.soak --requests 400 --warmup 100   # a shorter run
    python -m benchmarks.run --only soak            # the same through the runner (--quick: 100 after 20)

Writes benchmarks/results/soak.json (RSS samples, status counts, machine facts) and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import struct
import time
import zlib
from pathlib import Path

import cv2
import httpx
import numpy as np
from PIL import Image

from benchmarks.harness.common import RESULTS_DIR, log, machine_info, write_json
from benchmarks.harness.profiles import Profile
from benchmarks.harness.server import enhancer_server, process_tree_rss


def _photo(h: int, w: int, seed: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    planes = [0.5 + 0.4 * np.sin(rng.uniform(0.01, 0.1) * yy + rng.uniform(0.01, 0.1) * xx) for _ in range(channels)]
    img = np.stack(planes, axis=-1) + rng.normal(0, 0.03, (h, w, channels))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _encode(pixels: np.ndarray, ext: str, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, pixels, list(params))
    assert ok
    return buf.tobytes()


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * (width * 3 + 1)))
        + chunk(b"IEND", b"")
    )


def request_mix(seed: int = 0) -> list[tuple[str, dict, set[int]]]:
    """(name, httpx request kwargs, acceptable statuses) for each kind of request in the mix."""
    good: list[tuple[str, bytes]] = []
    for i, (h, w) in enumerate([(64, 64), (120, 200), (240, 320), (300, 400), (480, 640), (37, 501)]):
        pixels = _photo(h, w, seed + i)
        good += [
            (f"jpeg {w}x{h}", _encode(pixels, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 40)),
            (f"png {w}x{h}", _encode(pixels, ".png")),
            (f"webp {w}x{h}", _encode(pixels, ".webp", cv2.IMWRITE_WEBP_QUALITY, 50)),
        ]
    good.append(("grey png", _encode(_photo(150, 150, 90, 1)[:, :, 0], ".png")))
    good.append(("rgba png", _encode(_photo(150, 150, 91, 4), ".png")))
    good.append(("16-bit png", _encode(_photo(100, 130, 92).astype(np.uint16) * 257, ".png")))
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_photo(120, 160, 93)).save(buf, "JPEG", quality=60, exif=exif)
    good.append(("exif-rotated jpeg", buf.getvalue()))

    mix = [(name, {"files": {"image": ("in", data, "application/octet-stream")}}, {200}) for name, data in good]
    jpeg = good[0][1]
    mix += [
        ("truncated jpeg", {"files": {"image": ("x.jpg", jpeg[: len(jpeg) // 2], "image/jpeg")}}, {400}),
        ("text as .jpg", {"files": {"image": ("x.jpg", b"not an image at all", "image/jpeg")}}, {415}),
        ("pixel bomb header", {"files": {"image": ("x.png", _png_claiming(16384, 16384), "image/png")}}, {413}),
        ("wrong field", {"files": {"picture": ("x.png", good[1][1], "image/png")}}, {422}),
        ("json body", {"json": {"image": "x"}}, {415}),
    ]
    return mix


async def run_requests(url: str, mix, count: int, concurrency: int, offset: int, statuses: dict, failures: list) -> float:
    """`count` requests cycling through `mix`, `concurrency` at a time; returns seconds taken."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(offset + i)

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            name, kwargs, ok = mix[i % len(mix)]
            params = {"format": ("png", "jpeg", "webp")[i % 3]}
            r = await client.post("/upscale", params=params, **kwargs)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code not in ok:
                failures.append(f"{name}: {r.status_code} {r.text[:200]}")

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return time.perf_counter() - started


def rss_mib(pid: int, samples: int = 5, pause_s: float = 0.2) -> float:
    """Median of a few RSS samples of the idle server, in MiB."""
    values = []
    for _ in range(samples):
        values.append(process_tree_rss(pid))
        time.sleep(pause_s)
    return statistics.median(values) / 2**20


def soak(requests: int, warmup: int, concurrency: int = 4, checkpoints: int = 10, tolerance: float = 0.10) -> dict:
    """Start `enhancer serve` (default settings), send `warmup` then `requests` requests of the mix,
    and return what soak.json holds (`passed`: no 5xx, no unexpected answer, RSS growth within
    `tolerance`)."""
    mix = request_mix()
    facts = machine_info()
    statuses: dict[int, int] = {}
    failures: list[str] = []
    timeline = []
    with enhancer_server("soak") as server:
        served = server.served
        rss_start = rss_mib(server.pid)
        log(f"soak: server ready, RSS {rss_start:.0f} MiB; warm-up {warmup} requests")
        asyncio.run(run_requests(server.url, mix, warmup, concurrency, 0, statuses, failures))
        rss_warm = rss_mib(server.pid)
        timeline.append({"requests": 0, "rss_mib": rss_warm})
        log(f"soak: after warm-up RSS {rss_warm:.0f} MiB; {requests} requests")
        done, seconds = 0, 0.0
        step = max(1, requests // max(1, checkpoints))
        while done < requests:
            n = min(step, requests - done)
            seconds += asyncio.run(run_requests(server.url, mix, n, concurrency, warmup + done, statuses, failures))
            done += n
            timeline.append({"requests": done, "rss_mib": rss_mib(server.pid, samples=3)})
            log(f"soak: {done}/{requests} requests, RSS {timeline[-1]['rss_mib']:.0f} MiB")
        rss_end = rss_mib(server.pid)

    growth = rss_end / rss_warm - 1
    passed = not failures and growth <= tolerance and not any(s >= 500 for s in statuses)
    result = {
        "benchmark": "soak",
        "machine": facts,
        "settings": {"requests": requests, "warmup": warmup, "concurrency": concurrency, "tolerance": tolerance,
                     "mix": [name for name, _, _ in mix]},
        "served": served,
        "rss_mib": {"ready": rss_start, "after_warmup": rss_warm, "end": rss_end, "growth": growth},
        "timeline": timeline,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "unexpected": failures[:50],
        "requests_per_s": requests / seconds if seconds else None,
        "passed": passed,
    }
    log(
        f"soak: {requests} requests ({result['requests_per_s'] or 0:.1f}/s) after {warmup} warm-up; "
        f"RSS ready {rss_start:.0f} MiB, after warm-up {rss_warm:.0f} MiB, end {rss_end:.0f} MiB "
        f"({growth:+.1%}, limit +{tolerance:.0%}); statuses {result['statuses']}; "
        f"{len(failures)} unexpected -> {'PASS' if passed else 'FAIL'}"
    )
    return result


def run(profile: Profile) -> dict:
    """For `python -m benchmarks.run` (results/soak.json): the profile's request counts."""
    return soak(profile.soak_requests, profile.soak_warmup)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests after warm-up (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up requests before the baseline RSS")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--checkpoints", type=int, default=10, help="RSS samples during the run")
    parser.add_argument("--tolerance", type=float, default=0.10, help="allowed RSS growth (default 10 %%)")
    parser.add_argument("--output", default=str(RESULTS_DIR / "soak.json"))
    args = parser.parse_args(argv)
    result = soak(args.requests, args.warmup, args.concurrency, args.checkpoints, args.tolerance)
    write_json(Path(args.output), result)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
