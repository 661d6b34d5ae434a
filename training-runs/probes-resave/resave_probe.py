"""Probe (no run): can a JPEG that was a coarser JPEG before, at the same block grid, be told from a
single save by whether its coefficients sit on a coarser step (enhancer.imaging.earlier_jpeg)?
And what does the shipped restorer do to such files?

Part A, training content only (photos, scans, textures, rendered text and screens of the training
folders and fonts): `coarser_lattice_share` of single saves, by OpenCV at q30-97 and by the training's
encoder recipes (jpeg_damage.sample_recipe: libjpeg, Pillow and other encoders' tables, subsamplings).
This is where a threshold may be read: no single save should reach it.
Part B, validation content (`train.validation_content`, extended, with the held-out scans and texture
tiles): single saves at q50-95 and same-grid re-saves (an earlier OpenCV save at q30/50/70/85, saved
again at a finer quality), their shares, and the served `weights/dejpeg-q`'s gain over the file
against the earlier save (the picture the user had) or the clean image (single saves).

    python training-runs/probes-resave/resave_probe.py   # writes resave_probe.json beside it
"""
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from enhancer import imaging
from enhancer.imaging.earlier_jpeg import coarser_lattice_share
from enhancer.samples import to_unit_float
from enhancer.training import jpeg_damage, synthetic
from enhancer.training.dataset import centre_crop, load_images
from enhancer.training.evaluate import save_jpeg_opencv
from enhancer.training.train import validation_content

HERE = Path(__file__).parent
CROP = 512


def share(data: bytes):
    decoded = imaging.decode(data)
    return coarser_lattice_share(decoded.pixels, decoded.info.jpeg.luma_table), decoded


def decoded_bgr(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def psnr(a, b):
    return float(10 * np.log10(1 / np.mean((np.asarray(a, np.float64) - b) ** 2)))


def part_a() -> dict:
    rng = np.random.default_rng(2026_12_03)
    fonts = synthetic.list_fonts(Path("data/fonts"))
    content = {
        "photo": [centre_crop(p, CROP) for p in load_images(Path("data/photos6/train"))],
        "scan": [centre_crop(p, CROP) for p in load_images(Path("data/scans/train"))],
        "texture": [centre_crop(p, CROP) for p in load_images(Path("data/textures/train"))],
        "text": [synthetic.text_page(rng, CROP, fonts) for _ in range(6)],
        "screen": [synthetic.screen(rng, CROP, fonts) for _ in range(6)],
    }
    content["grey"] = [cv2.cvtColor(cv2.cvtColor(p, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR) for p in content["photo"][:8]]
    out = {}
    for kind, images in content.items():
        shares, unknown = [], 0
        for im in images:
            files = [save_jpeg_opencv(im, q) for q in (30, 50, 70, 80, 85, 90, 95, 97)]
            files += [jpeg_damage.save_jpeg(im, jpeg_damage.sample_recipe(rng, grayscale=kind == "grey")) for _ in range(6)]
            for data in files:
                value = share(data)[0]
                if value is None:
                    unknown += 1
                else:
                    shares.append(value)
        out[kind] = {"files": len(images) * 14, "unknown": unknown, "max": max(shares, default=None),
                     "p99": float(np.percentile(shares, 99)) if shares else None,
                     "mean": float(np.mean(shares)) if shares else None}
        print("A", kind, out[kind], flush=True)
    return out


def part_b() -> dict:
    from enhancer.training.evaluate_upscale import ServedModel

    model = ServedModel(Path("weights/dejpeg-q"))
    content = validation_content(load_images(Path("data/photos6/val")), synthetic.list_fonts(Path("data/fonts")), CROP,
                                 extended=True, pages=load_images(Path("data/scans/val")),
                                 textures=load_images(Path("data/textures/val")))
    kinds = ("photo", "screen", "grey", "grain", "scan", "document", "texture")
    rows = []
    for kind in kinds:
        for i, im in enumerate(content[kind]):
            truth0 = im[..., ::-1] / 255.0
            for q in (50, 70, 80, 85, 90, 95):
                data = save_jpeg_opencv(im, q)
                value, decoded = share(data)
                gain = psnr(model(data), truth0) - psnr(to_unit_float(decoded.pixels), truth0)
                rows.append({"kind": kind, "image": i, "first": None, "quality": q, "share": value, "gain": gain})
            for first in (30, 50, 70, 85):
                earlier = decoded_bgr(save_jpeg_opencv(im, first))
                truth = earlier[..., ::-1] / 255.0
                for q in (50, 70, 80, 85, 90, 95):
                    if q <= first:
                        continue
                    data = save_jpeg_opencv(earlier, q)
                    value, decoded = share(data)
                    gain = psnr(model(data), truth) - psnr(to_unit_float(decoded.pixels), truth)
                    rows.append({"kind": kind, "image": i, "first": first, "quality": q, "share": value, "gain": gain})
        print("B", kind, len(rows), flush=True)
    return {"rows": rows}


if __name__ == "__main__":
    result = {"part_a": part_a()}
    if "--a-only" not in sys.argv:
        result["part_b"] = part_b()
    (HERE / "resave_probe.json").write_text(json.dumps(result, indent=1) + "\n")
