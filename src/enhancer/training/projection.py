"""Keep a restoration consistent with the JPEG file it came from (a layer inside the model).

Why: the original image's DCT coefficients lie within half a quantisation step of the file's, per
8x8 block, in the file's YCbCr planes at the file's chroma resolution. Clipping the network's
coefficients to that interval bounds how far the answer can move from what the file proves, so a
good JPEG (small steps) can only be changed a little. Inside the SavedModel, it is applied on every
tile for every caller (our server, TF Serving), and training sees the same projected output.

The tile must start on the file's block grid (tiles are aligned to the model's size multiple, 16,
so 4:2:0 chroma blocks line up too). A zero step means unknown: that coefficient (all of them on the
blind path, the chroma ones for a greyscale file) is left as the network made it. Chroma is
projected approximately: the decoder's upsampled chroma is averaged back to the file's chroma grid,
the correction is made there and resized back bilinearly.
"""

from __future__ import annotations

import numpy as np

#: RGB -> YCbCr (JFIF, without the +128 offsets, which cancel in the corrections made here).
_RGB_TO_YCC = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32
)
_YCC_TO_RGB = np.linalg.inv(_RGB_TO_YCC.astype(np.float64)).astype(np.float32)
#: RGB -> Y (JFIF luma), also what KeepNeutral makes a grey answer from.
LUMA_WEIGHTS = _RGB_TO_YCC[0]


def dct_matrix() -> np.ndarray:
    """The orthonormal 8-point DCT-II matrix; JPEG's 2-D DCT is D @ block @ D.T."""
    n = np.arange(8)
    d = np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / 16) * np.sqrt(2 / 8)
    d[0] /= np.sqrt(2)
    return d.astype(np.float32)


def _blocks_dct(plane, d, inverse: bool = False):
    """2-D DCT (or its inverse) of every 8x8 block of [N, H, W] planes (H, W multiples of 8)."""
    import tensorflow as tf

    n, h, w = tf.shape(plane)[0], tf.shape(plane)[1], tf.shape(plane)[2]
    blocks = tf.reshape(plane, [n, h // 8, 8, w // 8, 8])
    pattern = "iu,nhiwj,jv->nhuwv" if inverse else "ui,nhiwj,vj->nhuwv"
    out = tf.einsum(pattern, d, blocks, d)
    return tf.reshape(out, [n, h, w])


def _project_plane(out_plane, in_plane, steps, d):
    """Correction that moves `out_plane`'s block coefficients into [in - step/2, in + step/2]."""
    import tensorflow as tf

    n, h, w = tf.shape(out_plane)[0], tf.shape(out_plane)[1], tf.shape(out_plane)[2]
    c_out = tf.reshape(_blocks_dct(out_plane, d), [n, h // 8, 8, w // 8, 8])
    c_in = tf.reshape(_blocks_dct(in_plane, d), [n, h // 8, 8, w // 8, 8])
    q = tf.reshape(steps, [-1, 1, 8, 1, 8])
    clipped = tf.clip_by_value(c_out, c_in - q / 2, c_in + q / 2)
    delta = tf.where(q > 0, clipped - c_out, tf.zeros_like(c_out))
    return _blocks_dct(tf.reshape(delta, [n, h, w]), d, inverse=True)


def project(restored, damaged, quantization):
    """Project `restored` [N, H, W, 3] (RGB in [0, 1]) onto the JPEG file's quantisation intervals
    around `damaged` (its decoded pixels), given the file's tables (`quantization` [N, 130])."""
    import tensorflow as tf

    d = tf.constant(dct_matrix())
    to_ycc = tf.constant(_RGB_TO_YCC.T * 255.0)
    to_rgb = tf.constant(_YCC_TO_RGB.T / 255.0)
    out_ycc = tf.einsum("nhwc,ck->nhwk", restored, to_ycc)
    in_ycc = tf.einsum("nhwc,ck->nhwk", damaged, to_ycc)
    luma_steps, chroma_steps = quantization[:, :64], quantization[:, 64:128]
    sampling = quantization[:, 128:130]

    corrections = [_project_plane(out_ycc[..., 0], in_ycc[..., 0], luma_steps, d)]
    size = tf.shape(restored)[1:3]
    for channel in (1, 2):
        out_plane, in_plane = out_ycc[..., channel : channel + 1], in_ycc[..., channel : channel + 1]
        per_factor = []
        for h_factor, v_factor in ((1, 1), (2, 1), (2, 2)):
            if (h_factor, v_factor) == (1, 1):
                delta = _project_plane(out_plane[..., 0], in_plane[..., 0], chroma_steps, d)
            else:
                pool = [1, v_factor, h_factor, 1]
                small_out = tf.nn.avg_pool2d(out_plane, pool, pool, "VALID")
                small_in = tf.nn.avg_pool2d(in_plane, pool, pool, "VALID")
                small = _project_plane(small_out[..., 0], small_in[..., 0], chroma_steps, d)
                delta = tf.image.resize(small[..., None], size, method="bilinear")[..., 0]
            per_factor.append(delta)
        is_22 = tf.logical_and(sampling[:, 0] == 2, sampling[:, 1] == 2)
        is_21 = tf.logical_and(sampling[:, 0] == 2, sampling[:, 1] == 1)
        choose = lambda mask, a, b: tf.where(mask[:, None, None], a, b)  # noqa: E731
        corrections.append(choose(is_22, per_factor[2], choose(is_21, per_factor[1], per_factor[0])))
    correction = tf.stack(corrections, axis=-1)
    return restored + tf.einsum("nhwk,kc->nhwc", correction, to_rgb)
