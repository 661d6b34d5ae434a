"""Per-image validation of a restorer on the held-out texture tiles (`data/textures/val`), as the
server runs it (its pipeline, `strength=auto` with the model's calibrated steps): each tile at its
size and at half of it, clean on the blind path (PSNR against itself) and saved by OpenCV (4:2:0)
at q50, q70 and q90 (gain over the JPEG). Validation only; the test set is not read.

    python training-runs/dejpeg-q7/texture_validation.py MODEL_DIR OUT.json
"""

import json
import sys
from pathlib import Path

import cv2
import numpy as np

from enhancer import imaging
from enhancer.samples import to_unit_float
from enhancer.training.evaluate import save_jpeg_opencv
from enhancer.training.evaluate_upscale import ServedModel


def psnr(a, b):
    return float(10 * np.log10(1 / np.mean((np.asarray(a, np.float64) - b) ** 2)))


model = ServedModel(Path(sys.argv[1]))
rows = {}
for path in sorted(Path("data/textures/val").glob("*.png")):
    tile = cv2.imread(str(path))
    half = cv2.resize(tile, (tile.shape[1] // 2, tile.shape[0] // 2), interpolation=cv2.INTER_AREA)
    for name, image in ((path.stem, tile), (f"{path.stem}-half", half)):
        truth = image[..., ::-1] / 255.0
        row = {"clean_psnr": psnr(model(cv2.imencode(".png", image)[1].tobytes()), truth)}
        for quality in (50, 70, 90):
            data = save_jpeg_opencv(image, quality)
            row[f"gain_q{quality}"] = psnr(model(data), truth) - psnr(to_unit_float(imaging.decode(data).pixels), truth)
        rows[name] = row
        print(name, {k: round(v, 2) for k, v in row.items()}, flush=True)
summary = {key: {"mean": float(np.mean([r[key] for r in rows.values()])), "worst": float(min(r[key] for r in rows.values()))}
           for key in next(iter(rows.values()))}
print(json.dumps(summary, indent=1))
Path(sys.argv[2]).write_text(json.dumps({"model": sys.argv[1], "per_image": rows, "summary": summary}, indent=1) + "\n")
