"""Probe and choice (no run): the factor on the small file's steps that an upscaler is told under
strength auto (`auto_step_scale`, as the restorer's `enhancer calibrate-steps`), on the upscalers'
**validation** pictures (`data/upscale-val-x2`, `data/upscale-val-x4`: held-out photos, soft photos
and texture tiles), JPEG q50 and q75 small inputs as `enhancer evaluate --scale N` makes them.
Per scale, quality and factor: the mean and worst Y-PSNR gain over bicubic. The rule it applies is
in training-runs/README.md ("upscale-steps"). Writes calibration.json beside it.

    python training-runs/upscale-steps/calibrate.py            # measure and choose: calibration.json
    python training-runs/upscale-steps/calibrate.py --record   # write the chosen factors into weights/
    python training-runs/upscale-steps/calibrate.py --scale 2  # one scale again (a new model), the other kept
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from enhancer.training.evaluate_upscale import BASELINE, ServedModel, enlarge, ground_truth, small_file, y_psnr
from enhancer.training.testset import load_testset

HERE = Path(__file__).parent
FACTORS = (1.25, 1.0, 0.85, 0.7, 0.6, 0.5, 0.42, 0.35)
QUALITIES = (50, 75)
MAX_MEAN_LOSS_DB = 0.05


def measure(model_dir: Path, scale: int, tmp: Path) -> dict:
    from enhancer import imaging
    from enhancer.samples import to_unit_float

    pictures = load_testset(Path(f"data/upscale-val-x{scale}"))
    out = {}
    for factor in FACTORS:
        folder = tmp / f"x{scale}_{factor}"
        shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns("eval", "MODEL_CARD.md"))
        meta = json.loads((folder / "metadata.json").read_text())
        meta["auto_step_scale"] = [[q, factor] for q in QUALITIES]
        (folder / "metadata.json").write_text(json.dumps(meta))
        model = ServedModel(folder)
        for quality in QUALITIES:
            gains = {}
            for name, _kind, image in pictures:
                truth_bgr = ground_truth(image, scale)
                truth = cv2.cvtColor(truth_bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
                data = small_file(truth_bgr, scale, quality)
                bicubic = enlarge(to_unit_float(imaging.decode(data).pixels), scale, cv2.INTER_CUBIC)
                gains[name] = float(y_psnr(model(data), truth, scale) - y_psnr(bicubic, truth, scale))
            worst = min(gains, key=gains.get)
            out[f"q{quality}_f{factor}"] = {"quality": quality, "factor": factor, "mean": float(np.mean(list(gains.values()))),
                                            "worst": gains[worst], "worst_image": worst, "below_bicubic": int(sum(g < 0 for g in gains.values())),
                                            "gains": gains}
            print(scale, quality, factor, f"mean {out[f'q{quality}_f{factor}']['mean']:+.3f} worst {gains[worst]:+.3f} {worst}", flush=True)
    return out


def choose(measured: dict) -> dict:
    """The rule: per quality, the best mean among the factors with no picture below bicubic (else
    the best worst); kept only if its mean is within MAX_MEAN_LOSS_DB of the own steps' and its
    worst no lower."""
    chosen = {}
    for quality in QUALITIES:
        rows = [r for r in measured.values() if r["quality"] == quality]
        own = next(r for r in rows if r["factor"] == 1.0)
        safe = [r for r in rows if r["worst"] >= 0]
        pick = max(safe, key=lambda r: r["mean"]) if safe else max(rows, key=lambda r: r["worst"])
        keep = bool(pick["mean"] >= own["mean"] - MAX_MEAN_LOSS_DB and pick["worst"] >= own["worst"])
        chosen[quality] = {"factor": pick["factor"] if keep else 1.0, "candidate": pick["factor"], "kept": keep,
                           "own_steps": {"mean": own["mean"], "worst": own["worst"]},
                           "candidate_figures": {"mean": pick["mean"], "worst": pick["worst"], "worst_image": pick["worst_image"]}}
    return chosen


def record(result: dict, scales: tuple[int, ...]) -> None:
    from enhancer.training.step_calibration import record_auto_step_scale

    for scale in scales:
        points = [[int(q), c["factor"]] for q, c in result[f"x{scale}"]["chosen"].items()]
        if any(f != 1.0 for _, f in points):
            record_auto_step_scale(Path(f"weights/upscale-x{scale}"), points)
            print("recorded", points, "in", f"weights/upscale-x{scale}/metadata.json")


if __name__ == "__main__":
    scales = (int(sys.argv[sys.argv.index("--scale") + 1]),) if "--scale" in sys.argv else (2, 4)
    if "--record" in sys.argv:
        record(json.loads((HERE / "calibration.json").read_text()), scales)
        sys.exit()
    result = json.loads((HERE / "calibration.json").read_text()) if len(scales) == 1 else {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in scales:
            measured = measure(Path(f"weights/upscale-x{scale}"), scale, Path(tmp))
            result[f"x{scale}"] = {"measured": measured, "chosen": choose(measured)}
    (HERE / "calibration.json").write_text(json.dumps(result, indent=1) + "\n")
    for scale in scales:
        print(f"x{scale}", json.dumps(result[f"x{scale}"]["chosen"]))
