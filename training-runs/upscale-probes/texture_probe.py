"""Would synthetic fine texture stand in for the fine-texture photo the validation set lacks?

Record of a diagnostic (issue 14), not part of the package; it used no test image. The 2x model
loses to bicubic on one test photo at q50 (a photo of grass), and no validation photo shows such a
loss, so nothing could be chosen against it. Here: procedural stand-ins, drawn at 2-3x and
area-downscaled to 512 px: "grass" (thousands of thin anti-aliased blades, mostly upright, greens)
and "gravel" (tens of thousands of small discs, greys and browns); small inputs made as `enhancer
evaluate --scale` makes them, run through the server's pipeline at strength auto with the steps
times f (f 0.7: a smaller step, as the restorer's calibration does). Printed: Y-PSNR gain over
bicubic. Output in texture_probe.txt: the model stays above bicubic on both at q50 (+0.19 to
+0.41 dB), so these stand-ins do not reproduce the test photo's loss and cannot choose a fix.

    python training-runs/upscale-probes/texture_probe.py 11
"""

import dataclasses, sys
from pathlib import Path
import cv2, numpy as np
from enhancer import imaging, tiling
from enhancer.samples import to_unit_float
from enhancer.training.evaluate_upscale import ServedModel, enlarge, ground_truth, small_file, to_8bit, y_psnr

def grass(rng, size=512, blades=9000, ss=3):
    S = size * ss
    img = np.zeros((S, S, 3), np.uint8); base = rng.integers(20, 70, 3); img[:] = (base[0]//2, base[1], base[2]//2)
    for _ in range(blades):
        x, y = rng.integers(0, S, 2); L = rng.integers(15, 60) * ss // 2
        ang = rng.normal(-np.pi/2, 0.35); dx, dy = np.cos(ang)*L, np.sin(ang)*L
        g = int(rng.integers(60, 220)); col = (int(g*rng.uniform(0.2,0.6)), g, int(g*rng.uniform(0.3,0.8)))
        cv2.line(img, (int(x), int(y)), (int(x+dx), int(y+dy)), col, int(rng.integers(1, 3))*ss//2 or 1, cv2.LINE_AA)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)

def gravel(rng, size=512, ss=2):
    S = size*ss; img = np.full((S, S, 3), 120, np.uint8)
    for _ in range(40000):
        x, y = rng.integers(0, S, 2); r = int(rng.integers(2, 9)); v = int(rng.integers(60, 230))
        cv2.circle(img, (int(x), int(y)), r, (v, int(v*rng.uniform(0.85,1.05)), int(v*rng.uniform(0.75,1.0))), -1, cv2.LINE_AA)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)

rng = np.random.default_rng(int(sys.argv[1]) if len(sys.argv) > 1 else 11)
imgs = {"grass": [grass(rng) for _ in range(3)], "gravel": [gravel(rng) for _ in range(2)]}
for scale in (2,):
    model = ServedModel(Path(f"weights/upscale-x{scale}"))
    for kind, images in imgs.items():
        for quality in (50, 75, None):
            for f in ((1.0, 0.7) if quality else (1.0,)):
                gains = []
                for image in images:
                    truth = ground_truth(image, scale)
                    data = small_file(truth, scale, quality)
                    clean = to_unit_float(imaging.decode(cv2.imencode(".png", truth)[1].tobytes()).pixels)
                    bicubic = enlarge(to_unit_float(imaging.decode(data).pixels), scale, cv2.INTER_CUBIC)
                    base = y_psnr(bicubic, clean, scale)
                    spec = dataclasses.replace(model.spec, auto_step_scale=((quality or 50, f),)) if quality else model.spec
                    prepared = model.pipeline.prepare(data, spec)
                    answer = to_8bit(tiling.stitch(model.tiles(prepared.take_job()), prepared.plan, scale=scale))
                    gains.append(y_psnr(answer, clean, scale) - base)
                print(f"x{scale} {kind} q{quality} f{f}: mean {np.mean(gains):+.3f} worst {np.min(gains):+.3f}  bicubic {base:.2f}", flush=True)
