"""Benchmark inputs: real photos as JPEGs of the sizes the issue names, generated at run time.

The source photos are the training set's PNGs in `data/photos/` (at most 1280x960 each; fetch
them with `enhancer fetch-photos` if missing). How each size is made:

* 256x256 and 512x512: crops of different photos (no resampling), 8 variants each, so a load
  run does not send one image over and over.
* 1920x1080: a 1280x720 crop upscaled 1.5x (OpenCV INTER_CUBIC).
* 1 MP to 48 MP (4000x3000, 6000x4000 = 24 MP, 8000x6000 = 48 MP, ...): a mosaic of photos,
  each resized to a 1200x800 cell (INTER_AREA down / INTER_CUBIC up, at most ~1.9x), cut to size.
  Mosaics keep real photographic detail at every scale, which a single 6x upscale would not.

All are written as baseline JPEG, quality 80, 4:2:0, into `benchmarks/out/inputs/` (gitignored).
Inference cost depends only on the pixel count; the content matters for decode/encode time only.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from benchmarks.harness.common import INPUT_DIR, REPO, log

PHOTO_DIR = REPO / "data" / "photos"
JPEG_QUALITY = 80
VERSION = 1  # bump when the recipe changes so cached files are regenerated
CELL = (800, 1200)  # mosaic cell height, width

#: Large sizes (width, height) for the memory-growth sweep; 24 and 48 MP are also the fairness
#: and memory targets' images.
MOSAIC_SIZES = {
    "1mp": (1152, 864),
    "2mp": (1920, 1080),  # the HD image below is an upscale; this one a mosaic
    "4mp": (2304, 1728),
    "8mp": (3264, 2448),
    "12mp": (4000, 3000),
    "24mp": (6000, 4000),
    "48mp": (8000, 6000),
}


@dataclass(frozen=True)
class InputImage:
    name: str
    path: Path
    width: int
    height: int
    bytes: int

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    def read(self) -> bytes:
        return self.path.read_bytes()

    def row(self, plan) -> dict:
        """The fields every per-image result row starts with: the image and how it is tiled."""
        return {"image": self.name, "width": self.width, "height": self.height, "megapixels": self.megapixels,
                "tiles": plan.num_tiles, "tile_shape": list(plan.tile_shape)}  # fmt: skip


def _photos() -> list[Path]:
    photos = sorted(PHOTO_DIR.glob("train/*.png")) + sorted(PHOTO_DIR.glob("val/*.png"))
    if not photos:
        raise SystemExit(
            f"no photos in {PHOTO_DIR}; run `enhancer fetch-photos` (see the README) to download them"
        )
    return photos


def _load(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"cannot read {path}")
    return image


def _crops(size: int, count: int) -> list[np.ndarray]:
    """`count` size x size crops, each from a different photo where possible (centre crops)."""
    big = [p for p in _photos() if min(_load(p).shape[:2]) >= size]
    crops = []
    for i in range(count):
        image = _load(big[(i * 3) % len(big)])
        h, w = image.shape[:2]
        # shift the window per variant so repeated photos still give different crops
        y = (h - size) // 2 if i < len(big) else (h - size) // 3
        x = (w - size) * ((i % 3) + 1) // 4
        crops.append(image[y : y + size, x : x + size])
    return crops


def _hd() -> np.ndarray:
    image = next(_load(p) for p in _photos() if _load(p).shape[:2] == (800, 1280))
    crop = image[40:760, :]
    return cv2.resize(crop, (1920, 1080), interpolation=cv2.INTER_CUBIC)


def _mosaic(width: int, height: int) -> np.ndarray:
    photos = [p for p in _photos() if min(_load(p).shape[:2]) >= 500]
    ch, cw = CELL
    rows, cols = -(-height // ch), -(-width // cw)
    canvas = np.empty((rows * ch, cols * cw, 3), np.uint8)
    k = 0
    for r in range(rows):
        for c in range(cols):
            image = _load(photos[k % len(photos)])
            k += 1
            scale_up = cw > image.shape[1] or ch > image.shape[0]
            cell = cv2.resize(image, (cw, ch), interpolation=cv2.INTER_CUBIC if scale_up else cv2.INTER_AREA)
            canvas[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw] = cell
    return canvas[:height, :width]


def _write(path: Path, image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"could not encode {path.name}")
    path.write_bytes(buf.tobytes())


def _recipes() -> dict[str, callable]:
    recipes: dict[str, callable] = {}
    for size in (256, 512):
        for i in range(8):
            recipes[f"crop{size}_{i}"] = (lambda s=size, j=i: _crops(s, 8)[j])
    recipes["hd1080"] = _hd
    for name, (w, h) in MOSAIC_SIZES.items():
        recipes[f"mosaic_{name}"] = (lambda w=w, h=h: _mosaic(w, h))
    return recipes


def ensure_inputs(names: list[str] | None = None) -> dict[str, InputImage]:
    """Generate (once) and return the named inputs; all of them when `names` is None."""
    INPUT_DIR.mkdir(parents=True, exist_ok=True)
    manifest_path = INPUT_DIR / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if manifest.get("version") != VERSION:
        manifest = {"version": VERSION, "images": {}}
    recipes = _recipes()
    wanted = list(recipes) if names is None else names
    result = {}
    cache: dict[int, list[np.ndarray]] = {}
    for name in wanted:
        path = INPUT_DIR / f"{name}.jpg"
        if name not in manifest["images"] or not path.exists():
            if name.startswith("crop"):
                size = int(name[4:].split("_")[0])
                if size not in cache:
                    cache[size] = _crops(size, 8)
                image = cache[size][int(name.split("_")[1])]
            else:
                image = recipes[name]()
            _write(path, image)
            manifest["images"][name] = {"width": image.shape[1], "height": image.shape[0]}
            log(f"generated {path.name} ({image.shape[1]}x{image.shape[0]}, {path.stat().st_size:,} bytes)")
        meta = manifest["images"][name]
        result[name] = InputImage(name, path, meta["width"], meta["height"], path.stat().st_size)
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return result


def group(prefix: str) -> list[InputImage]:
    """All variants of one size, e.g. group('crop512')."""
    names = [n for n in _recipes() if n.startswith(prefix + "_") or n == prefix]
    return list(ensure_inputs(names).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    for image in ensure_inputs().values():
        print(f"{image.name:16s} {image.width:5d}x{image.height:<5d} {image.megapixels:6.2f} MP {image.bytes:>11,} B  {image.path}")


if __name__ == "__main__":
    main()
