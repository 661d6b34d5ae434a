"""Fetch free training photographs onto a fresh machine: Debian wallpaper packages, the photo
puzzles of KDE's jigsaw game (man-made scenes the wallpapers lack) and the sample photos inside
scikit-learn. scikit-image's sample photos are the test set's
(`training.testset`), so they are never fetched for training.

Why these: they are public, licensed for redistribution, reachable from a machine that sees only
PyPI and Debian, and the same bytes come back every time (pinned by package). Packages are
downloaded and unpacked (`apt-get download` + `dpkg -x`), never installed.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

#: Plasma wallpapers that are photographs (the rest of the package is digital art).
PLASMA_PHOTOS = (
    "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf",
    "Grey", "Kite", "OneStandsOut", "Path", "summer_1am",
)  # fmt: skip


def unpack_package(package: str, workdir: Path) -> Path:
    """Download a Debian package and unpack it (no install); returns the unpacked root."""
    subprocess.run(["apt-get", "download", package], cwd=workdir, check=True, capture_output=True)
    (deb,) = workdir.glob(f"{package}_*.deb")
    root = workdir / package
    subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def _largest(paths: list[Path]) -> Path:
    """Plasma ships each wallpaper at several resolutions named WxH: keep the largest."""

    def pixels(p: Path) -> int:
        try:
            w, h = p.stem.split("x")
            return int(w) * int(h)
        except ValueError:
            return 0

    return max(paths, key=pixels)


def fetch_photos(out_dir: Path, puzzles: bool = False) -> list[Path]:
    """Collect the photographs into `out_dir` (flat, prefixed by source) and return their paths.

    `puzzles` adds palapeli's photo puzzles; off by default so the runs trained before them
    (up to `dejpeg-q5`) still rebuild from the same photos.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    collected: list[Path] = []

    def keep(src: Path, name: str) -> None:
        dst = out_dir / name
        shutil.copyfile(src, dst)
        collected.append(dst)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mate = unpack_package("mate-backgrounds", work)
        for p in sorted((mate / "usr/share/backgrounds/mate/nature").glob("*.jpg")):
            keep(p, f"mate-{p.name}")

        plasma = unpack_package("plasma-workspace-wallpapers", work)
        for name in PLASMA_PHOTOS:
            sizes = list((plasma / "usr/share/wallpapers" / name / "contents/images").glob("*.*"))
            if sizes:
                best = _largest(sizes)
                keep(best, f"plasma-{name}{best.suffix}")

        if puzzles:
            palapeli = unpack_package("palapeli-data", work)
            for p in sorted((palapeli / "usr/share/palapeli/collection").glob("*.jpg")):
                keep(p, f"palapeli-{p.name}")

        # gnome-backgrounds (43.x) is unpacked for completeness, but every picture in it is
        # a render or vector art, not a photograph, so none is kept.
        unpack_package("gnome-backgrounds", work)

    import sklearn.datasets

    sklearn_images = Path(sklearn.datasets.__file__).parent / "images"
    for p in sorted(sklearn_images.glob("*.jpg")):
        keep(p, f"sklearn-{p.name}")

    log.info("collected %d photographs into %s", len(collected), out_dir)
    return collected
