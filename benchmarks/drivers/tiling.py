"""Target 5: what tiling costs - tiled vs whole-image inference on the same image.

In a fresh process (nothing else using the model): each image is decoded, then enhanced
(a) whole, in one forward pass of the full image (the net is fully convolutional; sides are
multiples of 4), and (b) tiled exactly as the server does (`tiling.enhance_tiled`, tile 512,
overlap 32, batch 4). Reported: median time of each, the ratio, the tiles' padding/overlap
waste, and the PSNR between the two outputs (clipped to [0, 1]) over the whole image and
over its interior (32 px in from each border, where only the tile seams can differ: at the
image border the tiled path mirrors the image while the whole-image pass sees zero padding).

    python -m benchmarks.drivers.tiling --images crop512_0,hd1080 --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.harness.common import OUT_DIR, REPO, log, machine_info, read_json, write_json
from benchmarks.harness.profiles import Profile

TILE_SIZE, TILE_OVERLAP, BATCH = 512, 32, 4
BORDER = 32


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def measure(names: list[str], repeats: int) -> dict:
    from enhancer import imaging, tiling
    from enhancer.samples import to_unit_float

    from benchmarks.harness.common import bound_forward, load_default_model
    from benchmarks.harness.inputs import ensure_inputs

    images = ensure_inputs(names)
    runner = load_default_model()
    multiple = runner.spec.size_multiple
    rows = []
    for name in names:
        img = images[name]
        decoded = imaging.decode(img.read())
        rgb = to_unit_float(decoded.pixels)  # the whole image as the model sees it
        forward = bound_forward(runner, decoded.info)  # with the file's tables, as the server runs it
        plan = tiling.plan_tiles(img.height, img.width, TILE_SIZE, TILE_OVERLAP, multiple=multiple)
        runner.warm_up([plan.tile_shape], BATCH)
        forward(rgb[None])  # warm the whole-image shape too

        whole_times, tiled_times = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            whole = np.clip(forward(rgb[None])[0], 0, 1)
            whole_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            tiled = np.clip(tiling.enhance_tiled(rgb, forward, TILE_SIZE, TILE_OVERLAP, BATCH, multiple=multiple), 0, 1)
            tiled_times.append(time.perf_counter() - t)
        inner = (slice(BORDER, -BORDER), slice(BORDER, -BORDER))
        row = {
            **img.row(plan),
            "waste_ratio": plan.waste_ratio,
            "whole_s": float(np.median(whole_times)),
            "tiled_s": float(np.median(tiled_times)),
            "whole_s_all": whole_times,
            "tiled_s_all": tiled_times,
            "psnr_db": psnr(whole, tiled),
            "psnr_interior_db": psnr(whole[inner], tiled[inner]),
            "max_abs_diff_interior": float(np.abs(whole[inner] - tiled[inner]).max()),
            # how far the model moves the image at all, for scale
            "psnr_input_vs_output_db": psnr(rgb, whole),
        }
        row["tiled_over_whole"] = row["tiled_s"] / row["whole_s"]
        rows.append(row)
        log(
            f"tiling {name}: whole {row['whole_s']:.2f} s, tiled {row['tiled_s']:.2f} s "
            f"(x{row['tiled_over_whole']:.2f}, waste {row['waste_ratio']:.2f}), PSNR {row['psnr_db']:.1f} dB "
            f"(interior {row['psnr_interior_db']:.1f} dB)"
        )
    return {"machine": machine_info(), "settings": {"tile_size": TILE_SIZE, "tile_overlap": TILE_OVERLAP, "batch": BATCH},
            "model": {"name": runner.spec.name, "device": runner.device, "precision": runner.precision}, "images": rows}


def run(profile: Profile) -> dict:
    from benchmarks.harness.server import child_env

    out = OUT_DIR / "tiling.json"
    env = child_env()
    cmd = [sys.executable, "-m", "benchmarks.drivers.tiling", "--images", ",".join(profile.tiling_images),
           "--repeats", str(profile.tiling_repeats), "--json", str(out)]
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    return read_json(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="crop512_0,hd1080")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    write_json(Path(args.json), measure(args.images.split(","), args.repeats))


if __name__ == "__main__":
    main()
