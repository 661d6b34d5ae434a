"""Probe (no run): `weights/dejpeg-q` (dejpeg-q8) on validation pictures that were a JPEG before at the
same block grid (an earlier OpenCV save at q70 or q85, grid phase 0), saved again at q85/q90/q95, with
the earlier save as the truth (the photographed test page may be such a picture). Mix 4's "earlier
save kept" truths always move the grid, so training never showed this case. Per setting: mean and worst
gain over the file (dB), and the worst image's output PSNR (a re-save at the same tables is nearly the
truth itself, so its gain in dB is huge and negative even for a small change). Validation only.

    python training-runs/probes-phase0/phase0_probe.py   # about 2 minutes on 2 cores
"""
import numpy as np, cv2, json
from pathlib import Path
from enhancer import imaging
from enhancer.samples import to_unit_float
from enhancer.training.dataset import load_images
from enhancer.training.evaluate import save_jpeg_opencv
from enhancer.training.evaluate_upscale import ServedModel
from enhancer.training.synthetic import list_fonts
from enhancer.training.train import validation_content
def psnr(a,b): return float(10*np.log10(1/np.mean((np.asarray(a,np.float64)-b)**2)))
c = validation_content(load_images(Path("data/photos6/val")), list_fonts(Path("data/fonts")), 512, extended=True, pages=load_images(Path("data/scans/val")))
pics = {f"{k}{i}": im for k in ("document","scan","photo") for i, im in enumerate(c[k])}
m = ServedModel(Path("weights/dejpeg-q"))
out = {}
for first in (70, 85):
  for q in (85, 90, 95):
    gains, outputs = {}, {}
    for name, im in pics.items():
        truth_bgr = cv2.imdecode(np.frombuffer(save_jpeg_opencv(im, first), np.uint8), cv2.IMREAD_COLOR)  # earlier save, grid phase 0
        data = save_jpeg_opencv(truth_bgr, q); truth = truth_bgr[..., ::-1]/255.0
        outputs[name] = psnr(m(data), truth)
        gains[name] = outputs[name] - psnr(to_unit_float(imaging.decode(data).pixels), truth)
    worst = min(gains, key=gains.get)
    out[f"first{first}_q{q}"] = {"mean_gain": float(np.mean(list(gains.values()))), "worst_gain": gains[worst],
                                 "worst_image": worst, "worst_image_output_psnr": outputs[worst]}
    print(first, q, out[f"first{first}_q{q}"], flush=True)
Path("training-runs/probes-phase0/phase0_probe.json").write_text(json.dumps(out, indent=1) + "\n")
