"""bfloat16 against float32 on this CPU: each served model's speed, and how much its answers change.

Issue 15: `ENHANCER_PRECISION=auto` turns on oneDNN's BF16 math where the CPU has bfloat16
instructions. The math mode is fixed when TensorFlow loads, so every measurement is a fresh
process (`--child`) that resolves its precision with `enhancer.precision.prepare` (the server's own
path) and loads the model with the server's runner. Processes alternate float32, bfloat16,
float32, bfloat16, ... for `--rounds` rounds; a round's ratio compares two neighbouring processes,
so drift in a shared machine's speed hits both sides of it alike.

Per model (the served restorer and the 2x / 4x upscalers, each on the tile the server gives it on a
CPU, batch 1, the tile cut from a 4:2:0 JPEG q50 of a validation photo with its tables as the extra
input): output megapixels per second over at least `--seconds`. Then, in the same processes, the
answers on the validation photos' centre crops (256 px): the restorer on JPEG q10 and q90; an
upscaler on the crop shrunk by its scale (area), clean and JPEG q75. Reported: PSNR against the
clean crop in each precision, their difference, and the PSNR between the two precisions' answers.
This is the measurement on bfloat16 hardware that `enhancer export` can only emulate.

    python -m benchmarks.drivers.precision --json benchmarks/results/precision.json

On a CPU with avx512_bf16 and no AMX, bfloat16 is TensorFlow's graph rewrite of the convolutions
(enhancer.precision), and `--record` writes each model's measured change into its metadata.json
(`bfloat16.graph_rewrite`), which `ENHANCER_PRECISION=auto` reads there; `--record-from FILE` does
the same from an earlier run's JSON without measuring again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness.common import REPO, log, machine_info, write_json

MODELS = ("weights/dejpeg-q", "weights/upscale-x2", "weights/upscale-x4")
CROP = 256


def _cases(scale: int):
    """(label, input BGR, clean BGR, JPEG quality or None) on the validation photos' centre crops."""
    import cv2

    from enhancer.training.dataset import load_images

    photos = load_images(REPO / "data" / "photos" / "val")
    for i, photo in enumerate(photos):
        h, w = photo.shape[:2]
        clean = photo[(h - CROP) // 2 :][:CROP, (w - CROP) // 2 :][:, :CROP]
        small = clean if scale == 1 else cv2.resize(clean, (CROP // scale, CROP // scale), interpolation=cv2.INTER_AREA)
        for quality in (10, 90) if scale == 1 else (None, 75):
            yield f"val{i}_{'clean' if quality is None else f'q{quality}'}", small, clean, quality


def _jpeg(bgr: np.ndarray, quality: int) -> bytes:
    import cv2

    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buffer.tobytes()


def child(model_dir: Path, setting: str, seconds: float, out: Path, graph_rewrite: bool = False) -> None:
    """One process, one precision: time the model on its served tile, keep its answers.
    `graph_rewrite`: resolve the precision as on this CPU without AMX (the graph rewrite)."""
    from enhancer import precision

    cpuinfo = precision.read_cpuinfo()
    if graph_rewrite:
        cpuinfo = "\n".join(line.replace(" amx_bf16", "") for line in cpuinfo.splitlines())
    plan = precision.prepare(setting, [model_dir], cpuinfo=cpuinfo)
    import cv2

    from enhancer import imaging
    from enhancer.conditioning import Strength, model_inputs
    from enhancer.config import Settings
    from enhancer.models.contract import read_spec
    from enhancer.models.saved_model import SavedModelRunner, configure_device
    from enhancer.samples import to_unit_float

    spec = read_spec(model_dir)
    settings = Settings(_env_file=None, precision=setting)
    runner = SavedModelRunner(model_dir, device=configure_device(settings, plan))
    tile = settings.tiling_for(spec).tile_size

    def run(data: bytes, strength: Strength = Strength.auto) -> np.ndarray:
        image = imaging.decode(data)
        pixels = to_unit_float(image.pixels)
        h, w = pixels.shape[:2]
        pad_h, pad_w = -h % spec.size_multiple, -w % spec.size_multiple
        pixels = np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
        inputs = {k: v[None] for k, v in model_inputs(spec, image.info, strength).items()}
        out = runner.forward(pixels[None], inputs)[0]
        return np.clip(out[: h * spec.scale, : w * spec.scale], 0, 1)

    photo = next(_cases(1))[2]
    big = cv2.resize(photo, (tile, tile), interpolation=cv2.INTER_CUBIC)
    image = imaging.decode(_jpeg(big, 50))
    batch = to_unit_float(image.pixels)[None]
    inputs = {k: v[None] for k, v in model_inputs(spec, image.info).items()}
    runner.forward(batch, inputs)  # first call of this shape: not timed
    runner.forward(batch, inputs)
    times = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < 5:
        t = time.perf_counter()
        runner.forward(batch, inputs)
        times.append(time.perf_counter() - t)
    out_mp = (tile * spec.scale) ** 2 / 1e6
    answers = {}
    for label, small, _clean, quality in _cases(spec.scale):
        data = imaging.encode(cv2.cvtColor(small, cv2.COLOR_BGR2RGB), imaging.OutputFormat.png) if quality is None else _jpeg(small, quality)
        answers[label] = run(data, Strength.off if quality is None and spec.scale > 1 else Strength.auto)
    np.savez(out.with_suffix(".npz"), **answers)
    out.write_text(json.dumps({
        "model": spec.name, "setting": setting, "precision": plan.describe(), "runner_precision": runner.precision,
        "environment": {"ONEDNN_DEFAULT_FPMATH_MODE": os.environ.get("ONEDNN_DEFAULT_FPMATH_MODE")},
        "tile": tile, "output_megapixels_per_forward": out_mp, "forwards": len(times),
        "seconds_median": float(np.median(times)), "output_mp_per_s": out_mp / float(np.median(times)),
    }))  # fmt: skip


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def measure(models: list[str], rounds: int, seconds: float, graph_rewrite: bool = False) -> dict:
    import cv2

    result = {"machine": machine_info(), "cpu_bfloat16_flags": _flags(), "rounds": rounds, "models": {},
              "graph_rewrite_on_amx": graph_rewrite}
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            runs = []
            for r in range(rounds):
                for setting in ("float32", "bfloat16"):
                    out = Path(tmp) / f"{Path(model).name}_{setting}_{r}.json"
                    subprocess.run([sys.executable, "-m", "benchmarks.drivers.precision", "--child", "--model", model,
                                    "--precision", setting, "--seconds", str(seconds), "--out", str(out),
                                    *(["--graph-rewrite"] if graph_rewrite else [])],
                                   check=True, cwd=REPO)  # fmt: skip
                    runs.append(json.loads(out.read_text()) | {"round": r})
                    log(f"{model} {setting} round {r}: {runs[-1]['output_mp_per_s']:.3f} output MP/s ({runs[-1]['precision']})")
            ratios = [b["output_mp_per_s"] / a["output_mp_per_s"] for a, b in zip(runs[::2], runs[1::2])]
            f32 = np.load(Path(tmp) / f"{Path(model).name}_float32_0.npz")
            b16 = np.load(Path(tmp) / f"{Path(model).name}_bfloat16_0.npz")
            scale = json.loads((REPO / model / "metadata.json").read_text()).get("scale", 1)
            quality: dict[str, dict] = {}
            for label, _small, clean, _q in _cases(scale):
                truth = cv2.cvtColor(clean, cv2.COLOR_BGR2RGB).astype(np.float32) / 255
                kind = label.split("_", 1)[1]
                entry = quality.setdefault(kind, {"float32_psnr_db": [], "bfloat16_psnr_db": [], "between_db": []})
                entry["float32_psnr_db"].append(_psnr(f32[label], truth))
                entry["bfloat16_psnr_db"].append(_psnr(b16[label], truth))
                entry["between_db"].append(_psnr(f32[label], b16[label]))
            for entry in quality.values():
                entry["change_db"] = float(np.mean(entry["bfloat16_psnr_db"]) - np.mean(entry["float32_psnr_db"]))
                lowest = float(min(entry["between_db"]))
                entry["bit_identical"] = bool(np.isinf(lowest))  # every answer equal in both precisions
                entry["lowest_between_db"] = None if np.isinf(lowest) else lowest
                entry["between_db"] = [None if np.isinf(v) else v for v in entry["between_db"]]
            result["models"][model] = {
                "runs": runs, "speedup_per_round": ratios, "speedup_median": float(np.median(ratios)),
                "psnr": quality,
            }  # fmt: skip
            log(f"{model}: bfloat16 / float32 = {', '.join(f'{r:.2f}' for r in ratios)}; "
                + "; ".join(f"{k} {v['change_db']:+.4f} dB" for k, v in quality.items()))  # fmt: skip
    return result


def _flags() -> list[str]:
    from enhancer.precision import cpu_bfloat16_flags, read_cpuinfo

    return list(cpu_bfloat16_flags(read_cpuinfo()))


def record_graph_rewrite(result: dict) -> list[Path]:
    """Write each measured model's graph-rewrite PSNR change (the larger one of its two kinds of
    input, with its sign) into its metadata.json; only from a run of the graph rewrite (a CPU with
    avx512_bf16 alone, or `--graph-rewrite` on one with AMX)."""
    from enhancer.precision import METADATA_KEY, REWRITE_METADATA_KEY, takes_graph_rewrite

    if not (takes_graph_rewrite(result["cpu_bfloat16_flags"]) or result.get("graph_rewrite_on_amx")):
        raise SystemExit(f"this run measured the math mode ({result['cpu_bfloat16_flags']}); on an AMX CPU measure the rewrite with --graph-rewrite")
    written = []
    for model, measured in result["models"].items():
        per_kind = {kind: round(entry["change_db"], 5) for kind, entry in measured["psnr"].items()}
        path = REPO / model / "metadata.json"
        meta = json.loads(path.read_text())
        meta.setdefault(METADATA_KEY, {})[REWRITE_METADATA_KEY] = {
            "psnr_change_db": max(per_kind.values(), key=abs),
            "per_kind_db": per_kind,
            "speedup_median": round(measured["speedup_median"], 3),
            "measured": f"{result['machine']['date']}, {result['machine']['cpu_model']} ({', '.join(result['cpu_bfloat16_flags'])}), "
                        "python -m benchmarks.drivers.precision: validation photos' 256 px centre crops",
        }  # fmt: skip
        path.write_text(json.dumps(meta, indent=2) + "\n")
        written.append(path)
        log(f"recorded in {path}: {meta[METADATA_KEY][REWRITE_METADATA_KEY]['psnr_change_db']:+.5f} dB")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--json")
    parser.add_argument("--record", action="store_true", help="write the graph rewrite's change into each metadata.json")
    parser.add_argument("--record-from", type=Path, help="record from this earlier run's JSON, measuring nothing")
    parser.add_argument("--graph-rewrite", action="store_true",
                        help="on a CPU with AMX, measure the graph rewrite (as without AMX) instead of the math mode")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.model, args.precision, args.seconds, args.out, args.graph_rewrite)
        return
    if args.record_from:
        record_graph_rewrite(json.loads(args.record_from.read_text()))
        return
    if not args.json:
        parser.error("--json is required")
    result = measure(args.models.split(","), args.rounds, args.seconds, args.graph_rewrite)
    write_json(Path(args.json), result)
    if args.record:
        record_graph_rewrite(result)


if __name__ == "__main__":
    main()
