"""Build the folder an upscaler's mix-4 run is chosen on: validation only, in the test set's layout
(`kinds.json` + PNGs), so `enhancer evaluate --scale N --testset data/upscale-val-xN --out DIR`
reports it per image (mean and worst) as it reports the test set.

As `upscale-x2u/validation_set.py` (the 4 held-out photos, the 5 held-out texture tiles, the photos
made soft), except that the soft photos are enlarged from 2 x `scale` times smaller, as mix 4's
training validation makes them: soft enough that the small image shows it. Nothing here is a test image.

    python training-runs/upscale-x2v/validation_set.py SCALE
"""

import json
import sys
from pathlib import Path

import cv2

scale = int(sys.argv[1])
factor = 2 * scale
out = Path(f"data/upscale-val-x{scale}")
out.mkdir(parents=True, exist_ok=True)
kinds = {}
for path in sorted(Path("data/photos/val").glob("*.png")):
    image = cv2.imread(str(path))
    cv2.imwrite(str(out / f"photo-{path.stem}.png"), image)
    kinds[f"photo-{path.stem}"] = "photo"
    h, w = image.shape[:2]
    small = cv2.resize(image, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(out / f"soft-{path.stem}.png"), cv2.resize(small, (w // factor * factor, h // factor * factor),
                                                               interpolation=cv2.INTER_CUBIC))
    kinds[f"soft-{path.stem}"] = "soft"
for path in sorted(Path("data/textures/val").glob("*.png")):
    cv2.imwrite(str(out / f"texture-{path.stem}.png"), cv2.imread(str(path)))
    kinds[f"texture-{path.stem}"] = "texture"
(out / "kinds.json").write_text(json.dumps(kinds, indent=1) + "\n")
print(f"{len(kinds)} validation images in {out}")
