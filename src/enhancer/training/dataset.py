"""Training data: clean photos prepared once, JPEG damage made on the fly.

Why on the fly: every step sees a fresh quality, chroma mode, grid phase and crop, so ~30 photos
give millions of distinct pairs. Why downscale sources: the wallpapers are themselves JPEGs;
area-downscaling by >= 2x averages their blocking away so it does not become "ground truth".
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}

#: The prototype's training qualities; the sampler draws them explicitly some of the time.
PROTOTYPE_QUALITIES = (5, 10, 30, 50, 70)

#: Whole photographs held out for validation and evaluation (never cropped for training).
DEFAULT_VALIDATION = ("plasma-Path", "plasma-ColorfulCups", "mate-LadyBird", "mate-Dune")


class SplitOverlapError(ValueError):
    """The same photo (by content) would be in two of train, validation and test."""


def content_hash(image: np.ndarray) -> str:
    """SHA-256 of decoded pixels (shape and samples): the same picture under any file name, in any
    lossless format, has the same hash; a re-encoded JPEG of it does not."""
    h = hashlib.sha256(repr((image.shape, image.dtype.str)).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def folder_hashes(folder: Path) -> dict[str, str]:
    """File name -> content hash of every decodable image in `folder` (empty if it does not exist)."""
    if not Path(folder).is_dir():
        return {}
    hashes = {}
    for path in sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        image = _imread(path)
        if image is not None:
            hashes[path.name] = content_hash(image)
    return hashes


def _overlaps(a: dict[str, str], b: dict[str, str]) -> list[tuple[str, str]]:
    """Pairs of names (one from each) whose contents are identical."""
    by_hash: dict[str, list[str]] = {}
    for name, digest in b.items():
        by_hash.setdefault(digest, []).append(name)
    return [(name, other) for name, digest in a.items() for other in by_hash.get(digest, [])]


def check_disjoint(splits: dict[str, dict[str, str]]) -> None:
    """Raise SplitOverlapError when a photo's content is in two of `splits` (split -> name -> hash)."""
    names = list(splits)
    clashes = [
        f"{x} ({first}) = {y} ({second})"
        for i, first in enumerate(names)
        for second in names[i + 1:]
        for x, y in _overlaps(splits[first], splits[second])
    ]  # fmt: skip
    if clashes:
        raise SplitOverlapError(
            "the same photo would be in two splits (identical pixels): " + "; ".join(clashes[:10])
            + (f"; and {len(clashes) - 10} more" if len(clashes) > 10 else "")
            + ". Remove the copies, or hold out the photo under every name it has"
        )


def prepare_photos(
    src_dir: Path,
    out_dir: Path,
    validation: tuple[str, ...] = DEFAULT_VALIDATION,
    min_downscale: float = 2.0,
    max_side: int = 2048,
    testset: Path | None = None,
) -> dict[str, int]:
    """Downscale every photo in `src_dir` (area interpolation) into `out_dir/{train,val}/*.png`.

    A photo whose stem is in `validation` goes to val/, the rest to train/. The factor is at least
    `min_downscale`, more if needed to bring the longer side under `max_side`.

    Refused (SplitOverlapError, before anything is written) when a photo would be in both train
    and val: the same pixels under two names in `src_dir` with one name held out, a photo that is
    also in the test set folder `testset` (when given), or a file left in `out_dir` by an earlier
    run in the other split than this run puts it (training reads every file of its folder).
    Afterwards the written folders are checked again by content.
    """
    sources = {"train": {}, "val": {}}
    paths = {}
    for path in sorted(p for p in Path(src_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        image = _imread(path)
        if image is None:
            log.warning("skipping %s: OpenCV cannot decode it", path)
            continue
        split = "val" if path.stem in validation else "train"
        sources[split][path.name] = content_hash(image)
        paths[path] = split
    splits = dict(sources)
    if testset is not None:
        splits["test"] = folder_hashes(testset)
    check_disjoint(splits)
    stale = []
    for split, other in (("train", "val"), ("val", "train")):
        stems = {path.stem for path, chosen in paths.items() if chosen == split}
        names = sorted(p.name for p in (Path(out_dir) / other).glob("*.png") if p.stem in stems)
        if names:
            stale.append(f"{Path(out_dir) / other} already holds {', '.join(names)}, which this run puts in {split}/")
    if stale:
        raise SplitOverlapError(
            "; ".join(stale) + " (left by an earlier run with another hold-out?); remove them or use an empty --out"
        )

    counts = {"train": 0, "val": 0}
    for split in counts:
        (out_dir / split).mkdir(parents=True, exist_ok=True)
    for path, split in paths.items():
        image = _imread(path)
        h, w = image.shape[:2]
        factor = max(min_downscale, max(h, w) / max_side)
        size = (max(1, round(w / factor)), max(1, round(h / factor)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(out_dir / split / f"{path.stem}.png"), small)
        counts[split] += 1
    check_disjoint({split: folder_hashes(out_dir / split) for split in counts})
    log.info("prepared %s photos into %s", counts, out_dir)
    return counts


def data_record(folder: Path) -> dict:
    """What a training run records about one split's folder: its images' names with their content
    hashes, and one fingerprint of the whole list (names and contents, in name order)."""
    hashes = folder_hashes(folder)
    whole = hashlib.sha256("".join(f"{name}\0{digest}\n" for name, digest in hashes.items()).encode())
    return {
        "folder": str(folder),
        "count": len(hashes),
        "fingerprint": whole.hexdigest()[:16],
        "images": [{"name": name, "sha256": digest[:16]} for name, digest in hashes.items()],
    }


def _imread(path: Path) -> np.ndarray | None:
    """cv2.imread, but None instead of an exception for images over OpenCV's decode limits
    (ENHANCER_MAX_PIXELS / ENHANCER_MAX_IMAGE_SIDE, set when the package is imported)."""
    try:
        return cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        log.warning("%s: %s", path, str(exc).strip().splitlines()[-1])
        return None


def load_images(folder: Path) -> list[np.ndarray]:
    """All images of a folder as uint8 BGR arrays, in name order."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    images = [_imread(p) for p in paths]
    return [im for im in images if im is not None]


def scaled_crop(rng: np.random.Generator, images: list[np.ndarray], size: int, scale_range: tuple[float, float]) -> np.ndarray:
    """A `size` x `size` region of one of `images` (each alike), area-downscaled by a factor drawn
    from `scale_range`; never enlarged, which would invent a smoothness the source lacks."""
    image = images[int(rng.integers(0, len(images)))]
    h, w = image.shape[:2]
    scale = max(rng.uniform(*scale_range), size / min(h, w))
    span = min(int(np.ceil(size / scale)), h, w)
    top, left = int(rng.integers(0, h - span + 1)), int(rng.integers(0, w - span + 1))
    return cv2.resize(image[top : top + span, left : left + span], (size, size), interpolation=cv2.INTER_AREA)


def jpeg(image_bgr: np.ndarray, quality: int, subsampling_444: bool = False) -> np.ndarray:
    """Round-trip an 8-bit BGR image through OpenCV's JPEG codec."""
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    params += [
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444 if subsampling_444 else cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
    ]
    ok, buf = cv2.imencode(".jpg", image_bgr, params)
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def sample_quality(rng: np.random.Generator) -> int:
    """JPEG quality weighted toward heavy damage, still covering 5-95 so good images stay good."""
    r = rng.random()
    if r < 0.25:
        return int(rng.choice(PROTOTYPE_QUALITIES))
    if r < 0.50:
        return int(rng.integers(5, 21))
    if r < 0.75:
        return int(rng.integers(21, 61))
    return int(rng.integers(61, 96))


@dataclass(frozen=True)
class Degradation:
    """Recipe for one damaged patch (kept so tests can check what was applied)."""

    quality: int
    subsampling_444: bool
    second_quality: int | None  # compressed twice, with a shifted grid, when set
    grayscale: bool
    shift: tuple[int, int]  # 8x8 grid phase of the crop
    dihedral: int  # 0..7: flips and 90-degree rotations
    channel_order: tuple[int, int, int] = (0, 1, 2)  # colour channels permuted before the JPEG


def sample_degradation(rng: np.random.Generator) -> Degradation:
    """Draw a degradation recipe."""
    return Degradation(
        quality=sample_quality(rng),
        subsampling_444=bool(rng.random() < 0.3),
        second_quality=sample_quality(rng) if rng.random() < 0.15 else None,
        grayscale=bool(rng.random() < 0.1),
        shift=(int(rng.integers(0, 8)), int(rng.integers(0, 8))),
        dihedral=int(rng.integers(0, 8)),
        channel_order=tuple(int(c) for c in rng.permutation(3)) if rng.random() < 0.5 else (0, 1, 2),
    )


def _dihedral(image: np.ndarray, k: int) -> np.ndarray:
    image = np.rot90(image, k % 4)
    return np.ascontiguousarray(image[:, ::-1] if k >= 4 else image)


def degrade_patch(
    image_bgr: np.ndarray, top: int, left: int, size: int, recipe: Degradation
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a `size`-square clean patch at (top, left) and its JPEG-damaged twin, both RGB float32.

    The JPEG is applied to a region starting `shift` pixels before the patch, so the patch sees
    the 8x8 grid at that phase; both outputs cover exactly the same pixels.
    """
    dy, dx = recipe.shift
    y0, x0 = top - dy, left - dx
    region = image_bgr[y0 : top + size, x0 : left + size]
    if recipe.channel_order != (0, 1, 2):
        # 26 photos hold few saturated purples and cyans; permuting channels supplies them (a net
        # trained without this damaged a held-out photo of purple and cyan cups by 9 dB at q90).
        region = np.ascontiguousarray(region[..., list(recipe.channel_order)])
    if recipe.grayscale:
        region = cv2.cvtColor(cv2.cvtColor(region, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    damaged = jpeg(region, recipe.quality, recipe.subsampling_444)
    if recipe.second_quality is not None:
        # Re-save after a crop by a few pixels: the second grid no longer lines up with the first.
        s = 1 + (dy + dx) % 7
        damaged[s:, s:] = jpeg(np.ascontiguousarray(damaged[s:, s:]), recipe.second_quality, recipe.subsampling_444)
    clean = region[dy:, dx:]
    damaged = damaged[dy:, dx:]
    pair = []
    for patch in (damaged, clean):
        rgb = cv2.cvtColor(np.ascontiguousarray(patch), cv2.COLOR_BGR2RGB)
        pair.append(_dihedral(rgb, recipe.dihedral).astype(np.float32) / 255.0)
    return pair[0], pair[1]


class PatchSampler:
    """Deterministic stream of (damaged, clean) batches: batch `step` depends only on (seed, step),
    so a resumed run sees exactly the data it would have seen without the interruption."""

    def __init__(self, images: list[np.ndarray], patch_size: int, batch_size: int, seed: int):
        margin = 8
        self.images = [im for im in images if min(im.shape[:2]) >= patch_size + margin]
        if not self.images:
            raise ValueError(f"no training image is at least {patch_size + margin} px on its short side")
        areas = np.array([im.shape[0] * im.shape[1] for im in self.images], dtype=np.float64)
        self.weights = areas / areas.sum()
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.seed = seed

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, step])
        size, margin = self.patch_size, 8
        damaged, clean = [], []
        for _ in range(self.batch_size):
            image = self.images[rng.choice(len(self.images), p=self.weights)]
            h, w = image.shape[:2]
            top = int(rng.integers(margin, h - size + 1))
            left = int(rng.integers(margin, w - size + 1))
            x, y = degrade_patch(image, top, left, size, sample_degradation(rng))
            damaged.append(x)
            clean.append(y)
        return np.stack(damaged), np.stack(clean)


def validation_pairs(
    images: list[np.ndarray], qualities: tuple[int, ...], crop: int | None = 512
) -> dict[int, list[tuple[np.ndarray, np.ndarray]]]:
    """Fixed validation set: per quality, (damaged, clean) pairs of the held-out images' centre crops.

    JPEG is applied to the whole held-out image (4:2:0, as most cameras and sites save) and then
    cropped, so validation sees the damage exactly as a user's photo has it.
    """
    def rgb(patch: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(patch, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0

    out: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for q in qualities:
        out[q] = []
        for image in images:
            damaged = jpeg(image, q)
            h, w = image.shape[:2]
            ch, cw = (min(crop, h), min(crop, w)) if crop else (h, w)
            top, left = (h - ch) // 2, (w - cw) // 2
            window = (slice(top, top + ch), slice(left, left + cw))
            out[q].append((rgb(damaged[window]), rgb(image[window])))
    return out


def centre_crop(image: np.ndarray, crop: int) -> np.ndarray:
    """A centre crop of at most `crop` px a side, sides multiples of 16, so JPEG blocks (4:2:0)
    start on its grid."""
    h, w = image.shape[:2]
    ch, cw = min(crop, h) // 16 * 16, min(crop, w) // 16 * 16
    return image[(h - ch) // 2 :][:ch, (w - cw) // 2 :][:, :cw]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two float images in [0, 1] (the whole array as one signal)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def fingerprint(images: list[np.ndarray]) -> str:
    """Short hash of a set of images, recorded with a run so its data can be identified."""
    h = hashlib.sha256()
    for im in images:
        h.update(np.ascontiguousarray(im).tobytes()[:: max(1, im.size // 65536)])
    return h.hexdigest()[:16]
