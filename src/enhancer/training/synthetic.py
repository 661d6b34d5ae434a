"""Training images we can make instead of download: dead leaves, rendered text and screen layouts.

Why: 26 nature photographs teach soft organic texture only; a net trained on them smooths straight
edges, text and regular patterns, which users send too (documents, dashboards, charts, terminal
captures). Dead-leaves images (overlapping shapes with power-law sizes) share natural images'
scale-invariant statistics and give hard edges at every orientation; rendered text and interface
layouts give the flat colours, thin strokes and sharp glyphs that JPEG damages most visibly.

Every generator is a pure function of its `numpy.random.Generator`, so the training stream stays
reproducible, and returns an 8-bit BGR array (OpenCV's order, like the photos).
"""

from __future__ import annotations

import string
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

#: Debian font packages whose TrueType files are used for training renders (`fetch_fonts`).
#: DejaVu, the system's default font (and matplotlib's), is deliberately absent: the screen-content
#: test images are rendered with it, so the test measures text in a font the net never saw.
TRAINING_FONT_PACKAGES = (
    "fonts-liberation", "fonts-cantarell", "fonts-comic-neue", "fonts-courier-prime",
    "fonts-anonymous-pro", "fonts-crosextra-carlito", "fonts-crosextra-caladea", "fonts-inconsolata",
    "fonts-noto-mono", "fonts-open-sans", "fonts-roboto-unhinted", "fonts-ebgaramond",
)  # fmt: skip

_WORDS = (
    "the of and to in is for on that by this with you it not or be are from at as your all have new "
    "more an was we will home can us about if page my has search free but our one other do no "
    "information time they site he up may what which their news out use any there see only so his "
    "when contact here business who web also now help get pm view online first am been would how "
    "were me services some these click its like service than find price date back top people had "
    "list name just over state year day into email two health world next used go work last most "
    "products music buy data make them should product system post her city add policy number "
    "Status OK ERROR warning 404 200 GET POST /api/v1 def return import class None True False 0x1F "
    "Total Revenue Q3 2026 +12.5% -3.2% Users Sessions CPU 87% Memory 4.2 GiB Latency p99 ms"
).split()


def fetch_fonts(out_dir: Path) -> list[Path]:
    """Download the training font packages (no install) and copy their .ttf/.otf files to `out_dir`."""
    import shutil
    import subprocess
    import tempfile

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for package in TRAINING_FONT_PACKAGES:
            done = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True)
            if done.returncode != 0:
                continue
            (deb,) = Path(tmp).glob(f"{package}_*.deb")
            root = Path(tmp) / package
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
            for font in root.rglob("*"):
                if font.suffix.lower() in (".ttf", ".otf"):
                    shutil.copyfile(font, out_dir / font.name)
    return sorted(p for p in out_dir.iterdir() if p.suffix.lower() in (".ttf", ".otf"))


def list_fonts(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".ttf", ".otf"))


@lru_cache(maxsize=512)
def _font(path: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(path, size)


def _colour(rng: np.random.Generator, dark: bool | None = None) -> tuple[int, int, int]:
    if dark is None:
        return tuple(int(c) for c in rng.integers(0, 256, 3))
    low, high = (0, 90) if dark else (170, 256)
    return tuple(int(c) for c in rng.integers(low, high, 3))


def dead_leaves(rng: np.random.Generator, size: int) -> np.ndarray:
    """Overlapping discs and rectangles, radius ~ r^-3 between 1 and size/2 px, random colours,
    some with a colour gradient, then a slight blur (real edges are never a single pixel step)."""
    image = np.full((size, size, 3), _colour(rng), np.uint8)
    r_min, r_max = 1.5, size / 2
    # Inverse-CDF sampling of a density proportional to r^-3 on [r_min, r_max].
    n = int(rng.integers(150, 400))
    u = rng.random(n)
    radii = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5
    for r in radii:
        cx, cy = (int(v) for v in rng.integers(-int(r), size + int(r), 2))
        colour = _colour(rng)
        if rng.random() < 0.7:
            cv2.circle(image, (cx, cy), int(round(r)), colour, -1, lineType=cv2.LINE_AA)
        else:
            angle = rng.uniform(0, 180)
            box = cv2.boxPoints(((cx, cy), (2 * r, 2 * r * rng.uniform(0.2, 1.0)), angle))
            cv2.fillPoly(image, [np.round(box).astype(np.int32)], colour, lineType=cv2.LINE_AA)
    if rng.random() < 0.3:  # low-frequency shading, as light falls on real surfaces
        ramp = np.linspace(rng.uniform(0.7, 1.0), rng.uniform(1.0, 1.2), size, dtype=np.float32)
        shade = ramp[:, None] if rng.random() < 0.5 else ramp[None, :]
        image = np.clip(image * shade[..., None], 0, 255).astype(np.uint8)
    sigma = rng.uniform(0.0, 1.0)
    if sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    if rng.random() < 0.3:
        noise = rng.normal(0, rng.uniform(1, 4), image.shape)
        image = np.clip(image + noise, 0, 255).astype(np.uint8)
    return image


def _sentence(rng: np.random.Generator, words: int) -> str:
    text = " ".join(str(rng.choice(_WORDS)) for _ in range(words))
    if rng.random() < 0.3:
        text += " " + "".join(rng.choice(list(string.digits + ".,:%$-"), int(rng.integers(2, 8))))
    return text


def text_page(rng: np.random.Generator, size: int, fonts: list[Path]) -> np.ndarray:
    """Lines of text in one font and size, dark on light or light on dark (documents, terminals)."""
    from PIL import Image, ImageDraw

    dark_background = rng.random() < 0.35
    background, ink = _colour(rng, dark=dark_background), _colour(rng, dark=not dark_background)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    font_size = int(rng.choice([8, 9, 10, 11, 12, 13, 14, 16, 18, 20, 24, 28, 36, 48]))
    font = _font(str(fonts[int(rng.integers(len(fonts)))]), font_size)
    y = int(rng.integers(-font_size, font_size))
    x0 = int(rng.integers(-20, 12))
    spacing = font_size * rng.uniform(1.1, 1.6)
    while y < size:
        colour = ink if rng.random() < 0.85 else _colour(rng, dark=not dark_background)
        draw.text((x0, y), _sentence(rng, int(rng.integers(3, 14))), font=font, fill=colour)
        y += int(spacing)
    return cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)


def screen(rng: np.random.Generator, size: int, fonts: list[Path]) -> np.ndarray:
    """An interface or dashboard: panels, buttons, rules, bar and line charts, labels."""
    from PIL import Image, ImageDraw

    dark = rng.random() < 0.3
    image = Image.new("RGB", (size, size), _colour(rng, dark=dark))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = (int(v) for v in rng.integers(-size // 4, size, 2))
        w, h = (int(v) for v in rng.integers(size // 8, size, 2))
        kind = rng.random()
        fill = _colour(rng, dark=dark) if rng.random() < 0.7 else _colour(rng)
        if kind < 0.35:  # a panel or button, sometimes rounded, sometimes outlined
            box = (x0, y0, x0 + w, y0 + h // 3)
            radius = int(rng.integers(0, 12))
            draw.rounded_rectangle(box, radius=radius, fill=fill, outline=_colour(rng) if rng.random() < 0.5 else None)
        elif kind < 0.55:  # bar chart
            bars = int(rng.integers(3, 12))
            width = max(2, w // (2 * bars))
            colour = _colour(rng)
            for i in range(bars):
                top = y0 + int(rng.integers(0, max(1, h)))
                draw.rectangle((x0 + 2 * i * width, top, x0 + (2 * i + 1) * width, y0 + h), fill=colour)
        elif kind < 0.75:  # line chart with axes
            points = np.cumsum(rng.normal(0, h / 10, int(rng.integers(5, 40))))
            xs = np.linspace(x0, x0 + w, len(points))
            ys = y0 + h / 2 + points
            draw.line(list(zip(xs.tolist(), ys.tolist())), fill=_colour(rng), width=int(rng.integers(1, 4)))
            draw.line([(x0, y0 + h), (x0 + w, y0 + h)], fill=_colour(rng, dark=not dark), width=1)
            draw.line([(x0, y0), (x0, y0 + h)], fill=_colour(rng, dark=not dark), width=1)
        else:  # rules and grid lines
            for i in range(int(rng.integers(2, 10))):
                y = y0 + i * int(rng.integers(6, 30))
                draw.line([(x0, y), (x0 + w, y)], fill=_colour(rng), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(2, 10))):  # labels
        font = _font(str(fonts[int(rng.integers(len(fonts)))]), int(rng.choice([9, 10, 11, 12, 14, 16, 20, 28])))
        x, y = (int(v) for v in rng.integers(-10, size, 2))
        draw.text((x, y), _sentence(rng, int(rng.integers(1, 5))), font=font, fill=_colour(rng, dark=not dark))
    return cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)


def grain(image: np.ndarray, rng: np.random.Generator, max_sigma: float = 7.0) -> np.ndarray:
    """Sensor noise or film grain that belongs to the picture (the clean target keeps it).

    Why: our photos are downscaled at least 2x, which washes their noise out, so a net trained on
    them learns that fine noise is compression damage and smooths it away even in a good file.
    Gaussian, sometimes spatially correlated (grain), mostly in luminance.
    """
    h, w = image.shape[:2]
    sigma = rng.uniform(1.0, max_sigma)
    luma = rng.normal(0, 1, (h, w, 1)).astype(np.float32)
    chroma = rng.normal(0, rng.uniform(0.0, 0.5), (h, w, 3)).astype(np.float32)
    noise = luma + chroma
    if rng.random() < 0.4:
        spread = rng.uniform(0.5, 1.2)
        noise = cv2.GaussianBlur(noise, (0, 0), spread) * (1 + spread)  # keep about the same strength
    return np.clip(image.astype(np.float32) + sigma * noise, 0, 255).astype(np.uint8)


def scanned(page: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A rendered page as a scanner or a phone camera returns it: slightly blurred strokes, paper
    that is neither flat nor white (uneven light, fibre texture), noise, often greyscale."""
    h, w = page.shape[:2]
    image = page.astype(np.float32)
    sigma = rng.uniform(0.3, 1.2)
    image = cv2.GaussianBlur(image, (0, 0), sigma)
    light = cv2.resize(rng.uniform(0.75, 1.1, (3, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    fibre = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), rng.uniform(0.7, 2.5))
    image = image * light[..., None] + rng.uniform(0, 6) * fibre[..., None]
    image = image + rng.normal(0, rng.uniform(0.5, 4.0), image.shape[:2])[..., None]
    if rng.random() < 0.5:
        image = cv2.cvtColor(np.clip(image, 0, 255).astype(np.uint8), cv2.COLOR_BGR2GRAY)
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return np.clip(image, 0, 255).astype(np.uint8)


def enlarged(image: np.ndarray, factor: float) -> np.ndarray:
    """`image` as a picture enlarged (bicubic) from a copy `factor` times smaller: soft, with ringing."""
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, round(w / factor)), max(1, round(h / factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def sharpened(image: np.ndarray, sigma: float, amount: float) -> np.ndarray:
    """`image` through an unsharp mask: the halos a phone or an editor adds."""
    blurred = cv2.GaussianBlur(image.astype(np.float32), (0, 0), sigma)
    return np.clip(image + amount * (image - blurred), 0, 255).round().astype(np.uint8)


def soften(image: np.ndarray, rng: np.random.Generator, enlarged_from: tuple[float, float],
           blur_sigma: tuple[float, float], sharpened_share: float = 0.0) -> np.ndarray:
    """`image` made soft as pictures users send often are: enlarged (`enlarged`) from a copy
    `enlarged_from` times smaller, or out of focus (Gaussian blur); with `sharpened_share`,
    sometimes instead sharpened (`sharpened`, the halos a phone or an editor adds).

    Why: such a picture is the truth a file holds; a net that has only seen crisp truths takes the
    ringing and halos for compression damage (a restorer) or cannot tell a soft picture from a sharp
    one (an upscaler).
    """
    if sharpened_share and rng.random() < sharpened_share:
        return sharpened(image, rng.uniform(0.8, 2.0), rng.uniform(0.3, 1.5))
    if rng.random() < 0.5:
        return enlarged(image, rng.uniform(*enlarged_from))
    return cv2.GaussianBlur(image, (0, 0), rng.uniform(*blur_sigma))
