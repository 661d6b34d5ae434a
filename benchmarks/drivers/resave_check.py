"""What the same-grid re-save check (enhancer.imaging.earlier_jpeg, run on every JPEG the server
restores under strength auto) costs per image, beside the decode it follows.

Photo-like JPEGs (the committed held-out photo enlarged, with noise) at q90 of 256x256, 512x512,
1920x1080 and 4000x3000, single saves and same-grid re-saves of a q50 save: the median of
`--repeats` calls of `pipeline.resaved_jpeg_reason` on the decoded image, and of the decode.

    python -m benchmarks.drivers.resave_check --json benchmarks/results/resave_check.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.harness.common import REPO, log, machine_info, write_json

SIZES = ((256, 256), (512, 512), (1080, 1920), (3000, 4000))


def _jpeg(bgr: np.ndarray, quality: int) -> bytes:
    import cv2

    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buffer.tobytes()


def _median_ms(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def measure(repeats: int) -> dict:
    import cv2

    from enhancer import imaging
    from enhancer.pipeline import resaved_jpeg_reason

    photo = cv2.imread(str(REPO / "tests" / "data" / "held_out_photo.png"), cv2.IMREAD_COLOR)
    rng = np.random.default_rng(0)
    rows = []
    for h, w in SIZES:
        big = cv2.resize(photo, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        big = (big + rng.integers(-5, 6, big.shape)).clip(0, 255).astype(np.uint8)
        earlier = cv2.imdecode(np.frombuffer(_jpeg(big, 50), np.uint8), cv2.IMREAD_COLOR)
        for kind, data in (("single q90", _jpeg(big, 90)), ("q50 re-saved at q90", _jpeg(earlier, 90))):
            image = imaging.decode(data)
            resaved_jpeg_reason(image)  # first call: the lattices are cached after it
            row = {"size": f"{w}x{h}", "megapixels": w * h / 1e6, "file": kind, "verdict": resaved_jpeg_reason(image),
                   "check_ms": _median_ms(lambda: resaved_jpeg_reason(image), repeats),
                   "decode_ms": _median_ms(lambda: imaging.decode(data), repeats)}  # fmt: skip
            rows.append(row)
            log(f"{row['size']} {kind}: check {row['check_ms']:.1f} ms, decode {row['decode_ms']:.1f} ms, {row['verdict']}")
    return {"machine": machine_info(), "repeats": repeats, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    write_json(args.json, measure(args.repeats))


if __name__ == "__main__":
    main()
