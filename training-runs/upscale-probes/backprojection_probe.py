"""Back-projection probe on VALIDATION photos only: upscaler answer y; y' = y + U(P(D(y)) - D(y)),
P = projection onto the small JPEG's quantisation intervals, D = Pillow bicubic downscale, U = bicubic."""
import sys, json, glob
import numpy as np, cv2
from PIL import Image
from enhancer import imaging
from enhancer.conditioning import quantization_vector
from enhancer.samples import to_unit_float
from enhancer.training.evaluate_upscale import ServedModel, ground_truth, small_file, enlarge, y_psnr, to_8bit
from enhancer.training.projection import project

def pil_down(rgb, scale):
    h, w = rgb.shape[:2]
    out = []
    for c in range(3):
        im = Image.fromarray(rgb[..., c].astype(np.float32), mode="F")
        out.append(np.asarray(im.resize((w // scale, h // scale), Image.Resampling.BICUBIC)))
    return np.stack(out, -1)

rows = []
for scale in (2, 4):
    model = ServedModel(f"weights/upscale-x{scale}")
    for path in sorted(glob.glob("data/photos/val/*.png")):
        img = cv2.imread(path)
        h, w = img.shape[:2]
        c = min(768 if scale == 2 else 1024, h, w) // (16 * scale) * (16 * scale)  # centre crop (speed)
        y0, x0 = max(0, (h - c) // 2), max(0, (w - c) // 2)
        truth_bgr = ground_truth(img[y0:y0 + c, x0:x0 + c], scale)
        truth = to_unit_float(cv2.cvtColor(truth_bgr, cv2.COLOR_BGR2RGB))
        for q in (75, 50):
            data = small_file(truth_bgr, scale, q)
            decoded = imaging.decode(data)
            small = to_unit_float(decoded.pixels)
            qvec = quantization_vector(decoded.info)
            y = model(data)
            bic = enlarge(small, scale, cv2.INTER_CUBIC)
            res = {"scale": scale, "image": path.split("/")[-1], "q": q,
                   "model": y_psnr(y, truth, scale) - y_psnr(bic, truth, scale)}
            cur = y.astype(np.float32)
            for it in range(1, 4):
                d = pil_down(cur, scale)
                p = project(d[None].astype(np.float32), small[None].astype(np.float32), qvec[None].astype(np.float32)).numpy()[0]
                hh, ww = cur.shape[:2]
                cur = cur + cv2.resize((p - d).astype(np.float32), (ww, hh), interpolation=cv2.INTER_CUBIC)
                res[f"bp{it}"] = y_psnr(to_8bit(cur), truth, scale) - y_psnr(bic, truth, scale)
            rows.append(res)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()}), flush=True)
json.dump(rows, open(__file__.replace(".py", ".json"), "w"), indent=1)
