"""enhancer: removes JPEG compression damage from photos, served by an async micro-batching server."""

# Before anything can import numpy: its huge-page advice is read once, when it is loaded.
from enhancer.host_memory import prefer_small_pages as _prefer_small_pages

SMALL_PAGES = _prefer_small_pages()

# Before anything can import cv2: OpenCV reads its decode limits from the environment when it is
# loaded, and every module of this package is imported after this file runs.
from enhancer.limits import configure_opencv as _configure_opencv

OPENCV_LIMITS = _configure_opencv()

__version__ = "0.1.0"
