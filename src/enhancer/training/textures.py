"""Fine grey textures for training (an upscaler's mix 3, a restorer's mix 5): bark, rock, sand, paper.

Why: an upscaler trained on wallpapers and rendered content came back below bicubic on fine
texture saved as a small JPEG (detail the JPEG left is noise-like, and the network smoothed it
away), and far below it on texture that was already soft; the restorer changed such a texture
on the blind path. The 512 px pattern tiles Krita ships
(Debian's `krita-data`) are photographs of such surfaces, clean of JPEG blocking at their stored
size. Training and validation take different surfaces: validation must tell whether the model
learned texture, not these tiles. Pixel-scale noise patterns (canvas weave, paper grain at one
pixel) are left out: no upscaler can recover them.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from enhancer.training.dataset import scaled_crop
from enhancer.training.sources import unpack_package

log = logging.getLogger(__name__)

PACKAGE = "krita-data"
PATTERNS = "usr/share/krita/patterns"
#: split -> pattern files (stems) stored under out_dir/split/
TEXTURES = {
    "train": ("15_texture-rockB", "17_texture-melt", "18_texture-bark", "19_texture-crackle", "20_texture-vegetal",
              "03_default-paper", "11_drawed_furry", "Rough_Paper", "Rough_Wall_With_Impasto"),
    "val": ("06_hard-grain", "14_texture-rock", "16_texture-woody", "22_texture-reptile", "Sand_fine"),
}  # fmt: skip
#: A training crop is area-downscaled by a factor drawn from this range (never enlarged).
SCALE_RANGE = (0.5, 1.0)


def fetch_textures(out_dir: Path) -> list[Path]:
    """Download Krita's data package and store the chosen pattern tiles under out_dir/{train,val}."""
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = unpack_package(PACKAGE, Path(tmp))
        for split, stems in TEXTURES.items():
            (out_dir / split).mkdir(parents=True, exist_ok=True)
            for stem in stems:
                target = out_dir / split / f"{stem}.png"
                shutil.copyfile(root / PATTERNS / f"{stem}.png", target)
                written.append(target)
    log.info("stored %d texture tiles in %s", len(written), out_dir)
    return written


def texture_crop(rng: np.random.Generator, textures: list[np.ndarray], size: int) -> np.ndarray:
    """A `size` x `size` BGR region of a texture tile, area-downscaled by a random factor."""
    return scaled_crop(rng, textures, size, SCALE_RANGE)
