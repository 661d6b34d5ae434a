"""Do real scans outside the data reproduce the test set's scanned-page loss at high quality?

Record of a diagnostic (2026-12-02), not part of the package: `dejpeg-q4` on pages from an older
OCRmyPDF source archive (`pip download ocrmypdf==9.8.2 --no-deps --no-binary :all:`, its
tests/resources) and on the validation's typewriter page, each area-downscaled by the factor given,
centre-cropped to 512 px, saved by OpenCV at each quality; printed: PSNR gain over the JPEG (RGB).

    python training-runs/dejpeg-q4/scan_probe.py weights/dejpeg-q PATH:FACTOR ...
"""

import sys
from pathlib import Path

import cv2
import numpy as np

from enhancer.training.evaluate import ImageForward, _rgb01, file_quantization, save_jpeg_opencv


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(1 / np.mean((a - b) ** 2))


forward = ImageForward(Path(sys.argv[1]))
for arg in sys.argv[2:]:
    path, factor = arg.rsplit(":", 1)
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    image = cv2.resize(image, (image.shape[1] // int(factor), image.shape[0] // int(factor)), interpolation=cv2.INTER_AREA)
    h, w = image.shape[:2]
    if min(h, w) > 512:
        image = image[h // 2 - 256 : h // 2 + 256, w // 2 - 256 : w // 2 + 256]
    row = []
    for quality in (50, 75, 85, 90, 95):
        data = save_jpeg_opencv(image, quality)
        damaged, clean = _rgb01(cv2.imdecode(np.frombuffer(data, np.uint8), 1)), _rgb01(image)
        answer = forward(damaged, file_quantization(data))
        row.append(f"q{quality} {psnr(answer, clean) - psnr(damaged, clean):+.2f}")
    print(Path(path).name, factor, image.shape, " ".join(row), flush=True)
