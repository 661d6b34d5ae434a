"""Peak memory per pixel in flight: what one image costs the server while it is served, per pixel,
before and after a change (issue 16, bug 1; sets enhancer.pixel_budget.BYTES_PER_PIXEL).

For each source tree (this checkout's `src/`, and with `--before COMMIT` that commit's, unpacked
with `git archive` into benchmarks/out/), a fresh `enhancer serve` with default settings and the
model `--model-dir` (default: the one served by default, weights/dejpeg-q) gets one small warm-up
upload, then each image alone: one second idle, the idle RSS read, the kernel's high-water mark
(VmHWM) reset (`/proc/PID/clear_refs` = 5), the upload, the high-water mark read (a 20 ms RSS
sampler too, in case the reset is not allowed). The cost of the image is peak - idle, reported in
bytes per image pixel (MiB per megapixel alongside).

Images, generated here (deterministic):
* `black_16384x3000.png`: the issue's all-black 49 MP PNG (a few KB; the answer is tiny too).
* `photo_8000x6000.jpg`: 48 MP of photo-like content (smooth gradients, edges, noise), JPEG
  quality 80: the answer is a large PNG, held until it is sent.
* `gradient16_8000x6000.png`: 48 MP of 16-bit RGB (colour ramps, every row alike so the file stays
  small): 16-bit samples cost twice the bytes of 8-bit ones wherever they are kept as such.

    python -m benchmarks.drivers.pixels_in_flight --before 05f06f4 --model-dir weights/dejpeg --json benchmarks/results/pixels_in_flight.json
    python -m benchmarks.drivers.pixels_in_flight --before 7dacf09 --json benchmarks/results/pixels_in_flight_dejpeg-q.json
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np

from benchmarks.harness.common import OUT_DIR, REPO, log, machine_info, now_utc, write_json
from benchmarks.harness.loadgen import LoadGenerator, Payload
from benchmarks.harness.server import RssSampler, ServerProcess, child_env, free_port, kernel_peak_rss
from enhancer.config import DEFAULT_MODEL_DIR


def black_png() -> tuple[str, bytes, int]:
    import cv2

    ok, data = cv2.imencode(".png", np.zeros((3000, 16384, 3), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return "black_16384x3000.png", data.tobytes(), 3000 * 16384


def photo_jpeg() -> tuple[str, bytes, int]:
    """Smooth colour gradients with hard edges at 1/4 size, enlarged, plus full-size noise."""
    import cv2

    h, w = 6000, 8000
    yy, xx = np.mgrid[0 : h // 4, 0 : w // 4].astype(np.float32)
    rng = np.random.default_rng(16)
    small = np.stack(
        [0.5 + 0.35 * np.sin(rng.uniform(0.01, 0.05) * yy + rng.uniform(0.01, 0.05) * xx + rng.uniform(0, 6)) for _ in range(3)],
        axis=-1,
    )
    small[(yy // 41 + xx // 53) % 2 == 0] *= 0.8
    pixels = cv2.resize((small * 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    pixels = cv2.add(pixels, rng.integers(0, 12, pixels.shape, dtype=np.uint8))
    ok, data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return "photo_8000x6000.jpg", data.tobytes(), h * w


def gradient16_png() -> tuple[str, bytes, int]:
    """16-bit RGB: colour ramps across, every row the same (so the file stays under the upload limit)."""
    import cv2

    h, w = 6000, 8000
    ramp = np.linspace(0.0, 1.0, w, dtype=np.float32)
    row = np.stack([ramp, ramp[::-1], np.abs(2 * ramp - 1)], axis=-1)
    pixels = np.broadcast_to((row * 65535).astype(np.uint16), (h, w, 3))
    ok, data = cv2.imencode(".png", np.ascontiguousarray(pixels), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return "gradient16_8000x6000.png", data.tobytes(), h * w


def source_tree(commit: str | None) -> Path:
    """`src/` of this checkout, or of `commit` unpacked from git (read-only use)."""
    if commit is None:
        return REPO / "src"
    target = OUT_DIR / f"source-{commit}"
    if not (target / "src").is_dir():
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "src"], capture_output=True, check=True).stdout
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
    return target / "src"


def _png(pixels: np.ndarray) -> bytes:
    import cv2

    return cv2.imencode(".png", pixels)[1].tobytes()


def _payload(name: str, data: bytes, pixels: int) -> Payload:
    boundary = "pixels-in-flight"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n\r\n'.encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return Payload(name, body, f"multipart/form-data; boundary={boundary}", pixels / 1e6)


def _reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def measure(label: str, src: Path, images: list[tuple[str, bytes, int]], model_dir: Path) -> dict:
    port = free_port()
    # default settings, except a request timeout no image here can reach on a busy machine
    env = child_env(ENHANCER_MODEL_DIR=model_dir, ENHANCER_LOG_LEVEL="warning", ENHANCER_REQUEST_TIMEOUT_S=3600)
    env["PYTHONPATH"] = f"{src}:{REPO}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    argv = [sys.executable, "-m", "enhancer.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    rows = []
    with ServerProcess(f"pixels-in-flight-{label}", argv, env, port) as server:
        served = server.served  # a source tree older than the read-back reports no settings
        lg = LoadGenerator(server.url + "/upscale", [], timeout_s=1800)
        small = np.full((64, 64, 3), 128, np.uint8)
        asyncio.run(lg.one_request(_payload("warm.png", _png(small), small.shape[0] * small.shape[1])))
        for name, data, pixels in images:
            time.sleep(1.0)
            idle = _status_bytes(server.pid, "VmRSS")
            reset = _reset_peak(server.pid)
            payload = _payload(name, data, pixels)
            with RssSampler(server.pid) as sampler:
                sample = asyncio.run(lg.one_request(payload))
            if not sample.ok:
                raise RuntimeError(f"{label} {name}: HTTP {sample.status} {sample.error}")
            hwm = kernel_peak_rss(server.pid) if reset else None
            peak = max(sampler.peak, hwm or 0)
            row = {
                "image": name,
                "upload_bytes": len(data),
                "pixels": pixels,
                "idle_rss_bytes": idle,
                "peak_rss_bytes": peak,
                "peak_kernel_hwm_bytes": hwm,
                "peak_sampled_bytes": sampler.peak,
                "growth_bytes": peak - idle,
                "bytes_per_pixel": (peak - idle) / pixels,
                "mib_per_megapixel": (peak - idle) / 2**20 / (pixels / 1e6),
                "latency_s": sample.latency,
                "server_timing_s": sample.timing,
            }
            rows.append(row)
            log(f"{label} {name}: +{row['growth_bytes'] / 2**20:.0f} MiB = {row['bytes_per_pixel']:.1f} B/px, {sample.latency:.0f} s")
    return {"label": label, "source": str(src), "model_dir": str(model_dir), "served": served, "images": rows,
            "bytes_per_pixel_max": max(r["bytes_per_pixel"] for r in rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="also measure this commit's source (e.g. the commit before the change)")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument(
        "--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help=f"the model to serve (default {DEFAULT_MODEL_DIR})"
    )
    args = parser.parse_args(argv)
    model_dir = args.model_dir if args.model_dir.is_absolute() else REPO / args.model_dir
    started = now_utc()
    images = [black_png(), photo_jpeg(), gradient16_png()]
    runs = []
    if args.before:
        runs.append(measure(f"before-{args.before}", source_tree(args.before), images, model_dir))
    runs.append(measure("after", source_tree(None), images, model_dir))
    result = {"benchmark": "pixels_in_flight", "started": started, "finished": now_utc(), "machine": machine_info(), "runs": runs}
    if args.json:
        write_json(args.json, result)
    for run in runs:
        log(f"{run['label']}: at most {run['bytes_per_pixel_max']:.1f} bytes per pixel in flight")
    return 0


if __name__ == "__main__":
    sys.exit(main())
