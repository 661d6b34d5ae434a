"""Per-image validation of a restorer on soft truths, as the server runs it (its pipeline,
`strength=auto` with the model's calibrated steps): validation pictures that were soft before they
were saved (enlarged from 2, 3 and 4 times smaller, out of focus, sharpened), each saved by OpenCV
(4:2:0) at q75, q85 and q90 (gain over the JPEG). The pictures: the held-out scan (`data/scans/val`)
at its size and half of it, the simulated scans and the held-out photos of the training validation
(`train.validation_content`). Validation only; the test set is not read.

    python training-runs/dejpeg-q8/soft_validation.py MODEL_DIR OUT.json
"""

import json
import sys
from pathlib import Path

import cv2
import numpy as np

from enhancer import imaging
from enhancer.samples import to_unit_float
from enhancer.training.dataset import load_images
from enhancer.training.evaluate import save_jpeg_opencv
from enhancer.training.evaluate_upscale import ServedModel
from enhancer.training.synthetic import enlarged, list_fonts, sharpened
from enhancer.training.train import validation_content

QUALITIES = (75, 85, 90)
SOFTENINGS = {
    "enlarged2": lambda im: enlarged(im, 2),
    "enlarged3": lambda im: enlarged(im, 3),
    "enlarged4": lambda im: enlarged(im, 4),
    "blurred": lambda im: cv2.GaussianBlur(im, (0, 0), 1.0),
    "sharpened": lambda im: sharpened(im, 1.5, 1.0),
}


def psnr(a, b):
    return float(10 * np.log10(1 / np.mean((np.asarray(a, np.float64) - b) ** 2)))


content = validation_content(load_images(Path("data/photos6/val")), list_fonts(Path("data/fonts")), 512, extended=True,
                             pages=load_images(Path("data/scans/val")))
pictures = {f"{kind}{i}": image for kind in ("document", "scan", "photo") for i, image in enumerate(content[kind])}
model = ServedModel(Path(sys.argv[1]))
rows = {}
for name, picture in pictures.items():
    for how, soften in SOFTENINGS.items():
        image = soften(picture)
        truth = image[..., ::-1] / 255.0
        row = {}
        for quality in QUALITIES:
            data = save_jpeg_opencv(image, quality)
            row[f"gain_q{quality}"] = psnr(model(data), truth) - psnr(to_unit_float(imaging.decode(data).pixels), truth)
        rows[f"{name}-{how}"] = row
        print(f"{name}-{how}", {k: round(v, 2) for k, v in row.items()}, flush=True)
summary = {key: {"mean": float(np.mean([r[key] for r in rows.values()])), "worst": float(min(r[key] for r in rows.values())),
                 "worst_image": min(rows, key=lambda n: rows[n][key])}
           for key in next(iter(rows.values()))}
print(json.dumps(summary, indent=1))
Path(sys.argv[2]).write_text(json.dumps({"model": sys.argv[1], "per_image": rows, "summary": summary}, indent=1) + "\n")
