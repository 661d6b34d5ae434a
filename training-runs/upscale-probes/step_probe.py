"""Would telling an upscaler smaller steps than a small JPEG's own (as strength auto now does for the
restorer, enhancer.training.step_calibration) keep textured images above bicubic?

Record of a diagnostic on the validation photos only (never the test set), not part of the package.
Truths: the 4 held-out photos' 512 px centre crops, as they are and with camera noise (sigma 5 and 9
levels, the restorer calibration's noise5/noise9), a stand-in for fine texture. Small inputs made
as `enhancer evaluate --scale` makes them (Pillow bicubic, OpenCV JPEG q50/q75), run through the
server's pipeline with the steps times f. Printed: Y-PSNR gain over bicubic, mean / worst image.

    python training-runs/upscale-probes/step_probe.py
"""

import dataclasses
from pathlib import Path

import cv2
import numpy as np

from enhancer import imaging, tiling
from enhancer.samples import to_unit_float
from enhancer.training.dataset import load_images
from enhancer.training.evaluate_upscale import ServedModel, enlarge, ground_truth, small_file, to_8bit, y_psnr
from enhancer.training.step_calibration import noisy

FACTORS = (1.0, 0.7, 0.5, 0.35)


def main():
    rng = np.random.default_rng(5)
    photos = [p[(p.shape[0] - 512) // 2 :][:512, (p.shape[1] - 512) // 2 :][:, :512] for p in load_images(Path("data/photos/val"))]
    kinds = {"photo": photos, "noise5": [noisy(p, 5, rng) for p in photos], "noise9": [noisy(p, 9, rng) for p in photos]}
    for scale in (2, 4):
        model = ServedModel(Path(f"weights/upscale-x{scale}"))
        for kind, images in kinds.items():
            for quality in (50, 75):
                gains = {f: [] for f in FACTORS}
                for image in images:
                    truth = ground_truth(image, scale)
                    data = small_file(truth, scale, quality)
                    clean = to_unit_float(imaging.decode(cv2.imencode(".png", truth)[1].tobytes()).pixels)
                    bicubic = enlarge(to_unit_float(imaging.decode(data).pixels), scale, cv2.INTER_CUBIC)
                    base = y_psnr(bicubic, clean, scale)
                    for f in FACTORS:
                        spec = dataclasses.replace(model.spec, auto_step_scale=((quality, f),))
                        prepared = model.pipeline.prepare(data, spec)
                        answer = to_8bit(tiling.stitch(model.tiles(prepared.take_job()), prepared.plan, scale=scale))
                        gains[f].append(y_psnr(answer, clean, scale) - base)
                print(f"x{scale} {kind} q{quality}", "  ".join(f"f{f}: {np.mean(g):+.2f}/{np.min(g):+.2f}" for f, g in gains.items()), flush=True)


if __name__ == "__main__":
    main()
