"""The test set: images of kinds the training set lacks, from sources it never draws on.

Why a separate set: validation chooses recipes and checkpoints, so its score flatters the model;
the test set is reported once per shipped model and chooses nothing. Its sources are disjoint from
training by construction: scikit-image's and matplotlib's sample pictures (never fetched for
training) and screen content rendered with DejaVu, the one font family training never renders.

Kinds: photographs, man-made scenes (straight edges), fine regular texture, text (scans and photos
of print), small web-sized images, and screen content (a document, a terminal, a chart, a
dashboard). Images that are themselves JPEGs are area-downscaled first, so their own blocking is
not taken as ground truth; scikit-image's grass.png is one in disguise (re-saved as JPEG at
quality 90 it comes back at 52 dB, against 40 dB at 88 and 42 dB at 92), so it is downscaled too.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

#: scikit-image sample file -> (kind, downscale factor).
SKIMAGE_IMAGES = {
    "astronaut.png": ("photo", 1), "chelsea.png": ("photo", 1), "coffee.png": ("photo", 1),
    "camera.png": ("photo", 1), "motorcycle_left.png": ("man-made", 1), "rocket.jpg": ("small", 2),
    "motorcycle_right.png": ("small", 3), "brick.png": ("texture", 1), "grass.png": ("texture", 2),
    "gravel.png": ("texture", 1), "page.png": ("text", 1), "text.png": ("text", 1),
}  # fmt: skip
#: matplotlib sample file -> (kind, downscale factor).
MATPLOTLIB_IMAGES = {"grace_hopper.jpg": ("photo", 2)}
SCREEN_RENDERS = ("document", "terminal", "chart", "dashboard")


def _dejavu(style: str, size: int):
    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf" / f"DejaVu{style}.ttf"), size)


def _document() -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (640, 480), (250, 250, 247))
    draw = ImageDraw.Draw(image)
    draw.text((40, 30), "Quarterly report: image service", font=_dejavu("Serif-Bold", 22), fill=(20, 20, 20))
    body = _dejavu("Serif", 13)
    text = ("Restoration quality was measured on photographs that neither training nor the recipe "
            "ever saw. Each image was saved as JPEG at qualities from 5 to 95 and sent to the "
            "server; the table lists the mean gain and the worst image per quality. ") * 6  # fmt: skip
    words, line, y = text.split(), "", 75
    for word in words:
        if draw.textlength(line + " " + word, font=body) > 560:
            draw.text((40, y), line, font=body, fill=(35, 35, 35))
            line, y = word, y + 19
            if y > 440:
                break
        else:
            line = f"{line} {word}".strip()
    draw.rectangle((40, 350, 600, 351), fill=(120, 120, 120))
    return cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)


def _terminal() -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (640, 400), (30, 32, 36))
    draw = ImageDraw.Draw(image)
    font = _dejavu("SansMono", 12)
    lines = [
        ("$ enhancer serve --port 8000", (200, 200, 200)),
        ("INFO  model dejpeg loaded (CPU, float32) in 1.9 s", (120, 200, 120)),
        ("INFO  warm-up of 81 tile shapes: 2.6 s", (120, 200, 120)),
        ("INFO  Uvicorn running on http://127.0.0.1:8000", (120, 200, 120)),
        ("WARN  upload refused: 413 image is 16384 x 3000 (limit 50 MP)", (230, 190, 80)),
        ("$ curl -F image=@photo.jpg localhost:8000/upscale -o out.png", (200, 200, 200)),
        ("  % Total    % Received % Xferd  Average Speed   Time", (180, 180, 180)),
        ("100  812k  100  640k  100  172k   1.2M   330k  0:00:01", (180, 180, 180)),
        ("ERROR batch of 4 tiles failed: ResourceExhaustedError", (230, 90, 90)),
        ("$ ls -la weights/", (200, 200, 200)),
        ("drwxr-xr-x 3 root root  4096 Dec  1 11:02 dejpeg", (120, 160, 230)),
        ("-rw-r--r-- 1 root root 18211 Dec  1 11:02 MODEL_CARD.md", (180, 180, 180)),
    ]
    for i, (text, colour) in enumerate(lines * 2):
        draw.text((10, 8 + 16 * i), text, font=font, fill=colour)
    return cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)


def _figure_to_bgr(figure) -> np.ndarray:
    figure.canvas.draw()
    rgba = np.asarray(figure.canvas.buffer_rgba())
    return cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGR)


def _chart() -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(7)
    figure, axis = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    x = np.arange(5, 100, 5)
    for label in ("ours", "NLM", "previous"):
        axis.plot(x, np.cumsum(rng.normal(0, 0.2, len(x))) + rng.uniform(0, 2), marker="o", label=label)
    axis.set_xlabel("JPEG quality")
    axis.set_ylabel("PSNR gain (dB)")
    axis.set_title("Gain over the JPEG input")
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    image = _figure_to_bgr(figure)
    plt.close(figure)
    return image


def _dashboard() -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(11)
    figure, axes = plt.subplots(2, 2, figsize=(6.4, 4.8), dpi=100)
    figure.patch.set_facecolor("#f3f4f7")
    axes[0, 0].bar(["Mon", "Tue", "Wed", "Thu", "Fri"], rng.integers(20, 90, 5), color="#4a78c2")
    axes[0, 0].set_title("Requests (k)")
    axes[0, 1].plot(rng.normal(200, 30, 60).cumsum() / 60, color="#d1495b")
    axes[0, 1].set_title("p99 latency (ms)")
    axes[1, 0].pie([55, 25, 20], labels=["CPU", "GPU", "idle"], autopct="%1.0f%%")
    axes[1, 1].axis("off")
    table = axes[1, 1].table(
        cellText=[["replicas", "4"], ["queue", "128 tiles"], ["errors", "0.02 %"], ["uptime", "99.97 %"]],
        loc="center",
    )
    table.scale(1, 1.4)
    figure.tight_layout()
    image = _figure_to_bgr(figure)
    plt.close(figure)
    return image


def _read(path: Path, factor: int) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if factor > 1:
        h, w = image.shape[:2]
        image = cv2.resize(image, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    return image


def build_testset(out_dir: Path) -> dict[str, str]:
    """Write the test images as PNG into `out_dir` with `kinds.json` (name -> kind); returns it."""
    import matplotlib
    import skimage

    out_dir.mkdir(parents=True, exist_ok=True)
    kinds: dict[str, str] = {}
    sources = [(Path(skimage.__file__).parent / "data", SKIMAGE_IMAGES, "skimage"),
               (Path(matplotlib.get_data_path()) / "sample_data", MATPLOTLIB_IMAGES, "matplotlib")]  # fmt: skip
    for folder, table, prefix in sources:
        for name, (kind, factor) in table.items():
            stem = f"{prefix}-{Path(name).stem}"
            cv2.imwrite(str(out_dir / f"{stem}.png"), _read(folder / name, factor))
            kinds[stem] = kind
    renders = {"document": _document, "terminal": _terminal, "chart": _chart, "dashboard": _dashboard}
    for name in SCREEN_RENDERS:
        cv2.imwrite(str(out_dir / f"screen-{name}.png"), renders[name]())
        kinds[f"screen-{name}"] = "screen"
    (out_dir / "kinds.json").write_text(json.dumps(kinds, indent=2) + "\n")
    return kinds


def load_testset(folder: Path) -> list[tuple[str, str, np.ndarray]]:
    """(name, kind, BGR image) for every test image, in name order."""
    kinds = json.loads((Path(folder) / "kinds.json").read_text())
    return [(name, kinds[name], cv2.imread(str(Path(folder) / f"{name}.png"), cv2.IMREAD_COLOR)) for name in sorted(kinds)]
