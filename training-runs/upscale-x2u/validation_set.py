"""Build the folder the upscalers' mix-3 runs are chosen on: validation only, in the test set's
layout (`kinds.json` + PNGs), so `enhancer evaluate --scale N --testset data/upscale-val --out DIR`
reports it per image (mean and worst) as it reports the test set.

Kinds: the 4 held-out photos (`data/photos/val`); the 5 held-out texture tiles (`data/textures/val`);
the 4 photos made soft (area-downscaled 2x, enlarged back with bicubic). Nothing here is a test image.

    python training-runs/upscale-x2u/validation_set.py
"""

import json
from pathlib import Path

import cv2

out = Path("data/upscale-val")
out.mkdir(parents=True, exist_ok=True)
kinds = {}
for path in sorted(Path("data/photos/val").glob("*.png")):
    image = cv2.imread(str(path))
    cv2.imwrite(str(out / f"photo-{path.stem}.png"), image)
    kinds[f"photo-{path.stem}"] = "photo"
    h, w = image.shape[:2]
    soft = cv2.resize(cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA), (w // 2 * 2, h // 2 * 2),
                      interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(out / f"soft-{path.stem}.png"), soft)
    kinds[f"soft-{path.stem}"] = "soft"
for path in sorted(Path("data/textures/val").glob("*.png")):
    cv2.imwrite(str(out / f"texture-{path.stem}.png"), cv2.imread(str(path)))
    kinds[f"texture-{path.stem}"] = "texture"
(out / "kinds.json").write_text(json.dumps(kinds, indent=1) + "\n")
print(f"{len(kinds)} validation images in {out}")
