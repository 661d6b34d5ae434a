"""Image bytes in and out, one job per module:

* `formats`: the supported formats (listed once), magic-byte sniffing, header reading, size checks.
* `decode`: bytes to float RGB pixels plus `ImageInfo` (everything else about the image).
* `encode`: float RGB pixels to answer bytes that look like the input's `ImageInfo`.
* `jpeg`: a JPEG's quantisation tables and quality, and whether its coded data is whole.
* `icc`: ICC profile colour spaces and embedding profiles in encoded bytes.

The names below are the package's API; `decode` and `encode` here are the functions (the modules of
the same names are reached with `from enhancer.imaging.decode import ...`).
"""

from __future__ import annotations

from enhancer.imaging.decode import DecodedImage, ImageInfo, decode
from enhancer.imaging.encode import answer_depth, encode
from enhancer.imaging.formats import (
    INPUT_FORMATS,
    SUPPORTED_NAMES,
    OutputFormat,
    read_image_size,
    sniff_format,
)
from enhancer.imaging.jpeg import JpegInfo, read_jpeg_info

__all__ = [
    "INPUT_FORMATS",
    "SUPPORTED_NAMES",
    "DecodedImage",
    "ImageInfo",
    "JpegInfo",
    "OutputFormat",
    "answer_depth",
    "decode",
    "encode",
    "read_image_size",
    "read_jpeg_info",
    "sniff_format",
]
