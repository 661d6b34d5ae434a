"""Pixel samples: how the sample types images travel in map to the model's float32 [0, 1] and back.

An image stays in the sample type it was decoded in (a byte per sample for an 8-bit photo) from
decoding until its tiles are batched, and only one batch at a time becomes float32: memory per
pixel in flight is set by these compact copies, not by float ones (benchmarks/RESULTS.md). The
model's outputs are kept as 16-bit samples (`OUTPUT_DTYPE`), finer than any answer (8-bit, or
16-bit PNG) at half the bytes of float32.

Pure numpy, so the batcher and the tiling can use it without loading a codec.
"""

from __future__ import annotations

import numpy as np

#: The sample type model outputs are kept in until the answer is encoded.
OUTPUT_DTYPE = np.dtype(np.uint16)

#: Integer sample types and the value that means white (full range, as the formats define it).
_FULL_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
#: Values converted at a time by `from_unit_float`: bounds its float temporaries whatever the size.
_CHUNK_VALUES = 1 << 22


def dtype_for_depth(depth: int) -> np.dtype:
    """The integer sample type of an 8- or 16-bit answer."""
    return np.dtype(np.uint16 if depth == 16 else np.uint8)


def _full_scale(dtype: np.dtype) -> float:
    try:
        return _FULL_SCALE[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"samples must be uint8, uint16 or floating point, not {np.dtype(dtype)}") from None


def white_value(dtype: np.dtype) -> float:
    """The sample value that means white: 255 or 65535 for integer samples, 1.0 for floating point."""
    dtype = np.dtype(dtype)
    return 1.0 if np.issubdtype(dtype, np.floating) else _full_scale(dtype)


def to_unit_float(samples: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 values in [0, 1]: uint8 / uint16 samples scaled from their full range; floating-point
    samples as they are (a float32 array is returned itself unless `out` is given, and is not clipped).

    Divides rather than multiplying by a reciprocal, so 8-bit samples give exactly the values a
    whole-image `astype(float32) / 255` gave.
    """
    if np.issubdtype(samples.dtype, np.floating):
        if out is None:
            return samples if samples.dtype == np.float32 else samples.astype(np.float32)
        np.copyto(out, samples, casting="same_kind")
        return out
    return np.divide(samples, np.float32(_full_scale(samples.dtype)), out=out, dtype=np.float32)


def from_unit_float(values: np.ndarray, dtype: np.dtype, out: np.ndarray | None = None) -> np.ndarray:
    """`values` (float, [0, 1] meaning black to white) as samples of `dtype`.

    Integer types: clipped to [0, 1] and rounded (the formula the encoder has always used, so a
    round trip through 8 or 16 bits is exact), a slice along the first axis at a time so the float
    temporaries stay small. Floating-point types: converted, not clipped.
    """
    dtype = np.dtype(dtype)
    if out is None:
        out = np.empty(values.shape, dtype)
    elif out.dtype != dtype or out.shape != values.shape:
        raise ValueError(f"out is {out.dtype} {out.shape}, expected {dtype} {values.shape}")
    if np.issubdtype(dtype, np.floating):
        np.copyto(out, values, casting="same_kind")
        return out
    top = np.float32(_full_scale(dtype))
    source, target = np.atleast_1d(values), np.atleast_1d(out)  # views: a scalar is one row
    step = max(1, _CHUNK_VALUES // max(1, source[0].size)) if len(source) else 1
    for begin in range(0, len(source), step):
        scaled = np.clip(source[begin : begin + step], 0.0, 1.0, dtype=np.float32)
        scaled *= top
        scaled += np.float32(0.5)
        np.copyto(target[begin : begin + step], scaled, casting="unsafe")  # truncates: rounds half up
    return out
