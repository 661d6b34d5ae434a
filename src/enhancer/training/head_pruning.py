"""Start a narrower upscaler from a trained wider one by keeping its most useful head channels.

Why: an upscaler's cost is mostly its head (convolutions at the input's resolution), and a head
trained from zero needs hours here. Keeping the trained restorer whole and, in each head
convolution, the output channels that carry the most weight (L2 norm of the weights that make
the channel times that of the weights that read it) gives a narrower net that starts close to
the wide one, so a short fine-tune recovers most of its quality.

The head is `build_upscaler`'s: `up_in`, blocks `up_0`..`up_{n-1}`, `up_out`, with `up_in`'s
output added to the last block's (`up_skip`), so those two layers keep one shared channel set.
"""

from __future__ import annotations

import numpy as np


def stored_head(weights: str) -> tuple[int, int]:
    """(channels, blocks) of the upscaler head stored in a .weights.h5 file.

    Keras stores a functional model's own layers by their automatic names in build order, so the
    head's convolutions are the top-level `conv2d*` groups: `up_in`, the blocks, `up_out`.
    """
    import h5py

    with h5py.File(weights, "r") as stored:
        convs = [name for name in stored["layers"] if name.startswith("conv2d")]
        channels = int(stored["layers"]["conv2d"]["vars"]["0"].shape[-1])
    return channels, len(convs) - 2


def head_of(model) -> tuple[int, int]:
    """(channels, blocks) of a built upscaler's head."""
    blocks = sum(1 for layer in model.layers if layer.name.startswith("up_") and layer.name[3:].isdigit())
    return int(model.get_layer("up_in").filters), blocks


def _norms_out(kernel: np.ndarray) -> np.ndarray:
    """L2 norm of the weights making each output channel (kernel [kh, kw, in, out])."""
    return np.sqrt((kernel**2).sum(axis=(0, 1, 2)))


def _norms_in(kernel: np.ndarray) -> np.ndarray:
    """L2 norm of the weights reading each input channel."""
    return np.sqrt((kernel**2).sum(axis=(0, 1, 3)))


def kept_channels(kernels: list[np.ndarray], width: int) -> list[np.ndarray]:
    """Per head layer except `up_out`, the sorted indices of the `width` output channels to keep.

    `kernels`: `up_in`, the blocks, `up_out`. A channel's score is how strongly it is made times
    how strongly it is read; the skip pair (`up_in`, last block) is scored on their sums.
    """
    n = len(kernels) - 2  # blocks
    scores = [_norms_out(kernels[i]) * _norms_in(kernels[i + 1]) for i in range(n + 1)]
    # up_in's output is also read by up_out through the skip; the last block's only by up_out.
    shared = scores[0] + _norms_out(kernels[0]) * _norms_in(kernels[-1]) + scores[n]
    kept = []
    for i in range(n + 1):
        score = shared if i in (0, n) else scores[i]
        kept.append(np.sort(np.argsort(score)[::-1][:width]))
    return kept


def narrowed(kernels: list[np.ndarray], biases: list[np.ndarray], width: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The head's (kernel, bias) pairs cut to `width` channels (`up_out` keeps its outputs)."""
    kept = kept_channels(kernels, width)
    n = len(kernels) - 2
    out = []
    for i, (kernel, bias) in enumerate(zip(kernels, biases)):
        rows = slice(None) if i == 0 else kept[i - 1]  # up_out reads the skip sum: kept[n]
        cols = kept[i] if i <= n else slice(None)
        out.append((kernel[:, :, rows, :][..., cols], bias[cols]))
    return out


def load_pruned(model, weights: str, scale: int) -> None:
    """Fill `model` (an upscaler with a narrower head of as many blocks) from a wider trained one."""
    import keras

    from enhancer.training.network import build_upscaler

    channels, blocks = stored_head(weights)
    width, own_blocks = head_of(model)
    if own_blocks != blocks or width > channels:
        raise ValueError(
            f"{weights} holds a {channels}-channel head of {blocks} blocks; it can start a narrower head "
            f"of the same depth, not {width} channels x {own_blocks} blocks"
        )
    restorer = keras.models.clone_model(model.get_layer("restorer"))  # same shape as the stored one
    source = build_upscaler(scale, head_channels=channels, head_blocks=blocks, restorer=restorer)
    source.load_weights(weights)
    model.get_layer("restorer").set_weights(source.get_layer("restorer").get_weights())
    names = ["up_in", *(f"up_{i}" for i in range(blocks)), "up_out"]
    kernels, biases = zip(*(source.get_layer(name).get_weights() for name in names))
    for name, pair in zip(names, narrowed(list(kernels), list(biases), width)):
        model.get_layer(name).set_weights(list(pair))
