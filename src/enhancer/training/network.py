"""The restoration networks: our residual two-level net and the prototype's CNN for comparison.

Why this shape: JPEG damage lives on the 8x8 block grid, so the net needs a reach of a few blocks,
but a 2-core CPU affords little arithmetic per pixel at the speed a server needs (the budget it
was designed to, and the speeds measured since, are in benchmarks/RESULTS.md). Working at half and
quarter resolution (space-to-depth, no information lost) buys a 29 px reach for 31 k MACs per pixel. The net predicts
a correction that is added to the input; the last convolution starts at zero, so an untrained net
is exactly the identity and training can only move away from "change nothing" where that helps.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from enhancer.training.jpeg_damage import QUANTIZATION_LENGTH

#: Height and width of the net's input must be multiples of this (two space-to-depth steps).
SIZE_MULTIPLE = 4


class SpaceToDepth(layers.Layer):
    """Fold each `block`x`block` patch into channels (pixel unshuffle): lossless downsampling."""

    def __init__(self, block: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.block = block

    def call(self, x):
        import tensorflow as tf

        return tf.nn.space_to_depth(x, self.block)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        b = self.block
        return (n, None if h is None else h // b, None if w is None else w // b, c * b * b)

    def get_config(self):
        return {**super().get_config(), "block": self.block}


class DepthToSpace(layers.Layer):
    """Inverse of SpaceToDepth (pixel shuffle)."""

    def __init__(self, block: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.block = block

    def call(self, x):
        import tensorflow as tf

        return tf.nn.depth_to_space(x, self.block)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        b = self.block
        return (n, None if h is None else h * b, None if w is None else w * b, c // (b * b))

    def get_config(self):
        return {**super().get_config(), "block": self.block}


def build_dejpeg(
    half_channels: int = 32,
    quarter_channels: int = 96,
    quarter_blocks: int = 4,
    name: str = "dejpeg",
) -> keras.Model:
    """Residual U-shaped net at 1/2 and 1/4 resolution; input H and W must be multiples of 4."""
    conv = lambda ch, k=3, **kw: layers.Conv2D(ch, k, padding="same", **kw)  # noqa: E731
    image = keras.Input(shape=(None, None, 3), name="image")

    half = SpaceToDepth(2, name="to_half")(image)
    half = conv(half_channels, activation="relu", name="half_in")(half)
    half = conv(half_channels, activation="relu", name="half_enc1")(half)
    skip = conv(half_channels, activation="relu", name="half_enc2")(half)

    quarter = SpaceToDepth(2, name="to_quarter")(skip)
    quarter = conv(quarter_channels, 1, activation="relu", name="quarter_in")(quarter)
    for i in range(quarter_blocks):
        quarter = conv(quarter_channels, activation="relu", name=f"quarter_{i}")(quarter)
    up = conv(half_channels * 4, 1, name="quarter_out")(quarter)
    up = DepthToSpace(2, name="to_half_again")(up)

    half = layers.Add(name="skip")([up, skip])
    half = layers.ReLU(name="skip_relu")(half)
    half = conv(half_channels, activation="relu", name="half_dec")(half)
    correction = conv(12, kernel_initializer="zeros", bias_initializer="zeros", name="half_out")(half)
    correction = DepthToSpace(2, name="to_full")(correction)
    restored = layers.Add(name="residual")([image, correction])
    return keras.Model(image, restored, name=name)


def build_prototype(name: str = "prototype") -> keras.Model:
    """The student prototype's CNN (64-64-128-256-3 filters, 3x3, sigmoid), kept for comparison."""
    image = keras.Input(shape=(None, None, 3), name="image")
    x = image
    for i, ch in enumerate((64, 64, 128, 256)):
        x = layers.Conv2D(ch, 3, padding="same", activation="relu", name=f"conv{i}")(x)
    out = layers.Conv2D(3, 3, padding="same", activation="sigmoid", name="out")(x)
    return keras.Model(image, out, name=name)


class QuantizationFeatures(layers.Layer):
    """The file's tables as features: log2 of each step (0 where unknown), which halves are
    known, and the chroma subsampling. Logs because a step's effect on the damage is multiplicative."""

    def call(self, quantization):
        import tensorflow as tf

        steps = quantization[:, :128]
        logs = tf.where(steps > 0, tf.math.log(tf.maximum(steps, 1.0)) / tf.math.log(2.0) / 8.0, 0.0)
        known = tf.cast(tf.stack([steps[:, 0] > 0, steps[:, 64] > 0], axis=1), tf.float32)
        return tf.concat([logs, known, quantization[:, 128:130] - 1.0], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 132)


class FiLM(layers.Layer):
    """Feature-wise scale and shift from the condition: x * (1 + gamma) + beta, per channel."""

    def call(self, inputs):
        x, params = inputs
        gamma, beta = params[:, None, None, : x.shape[-1]], params[:, None, None, x.shape[-1] :]
        return x * (1.0 + gamma) + beta

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]


class JpegProjection(layers.Layer):
    """Clip the restoration to the file's quantisation intervals (see `training.projection`)."""

    def call(self, inputs):
        from enhancer.training.projection import project

        restored, damaged, quantization = inputs
        return project(restored, damaged, quantization)

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]


class KeepNeutral(layers.Layer):
    """A tile whose pixels are all grey (R = G = B everywhere) comes back grey: the answer's luma
    in every channel. Why: a grey picture (a scan, a black-and-white photo) saved as a colour JPEG
    has flat chroma, so any colour the net adds is error, and a user sees it as a tint or fringes."""

    def call(self, inputs):
        import tensorflow as tf

        restored, image = inputs
        spread = tf.reduce_max(tf.reduce_max(image, axis=-1) - tf.reduce_min(image, axis=-1), axis=[1, 2])
        from enhancer.training.projection import LUMA_WEIGHTS

        luma = tf.reduce_sum(restored * tf.constant(LUMA_WEIGHTS, restored.dtype), axis=-1, keepdims=True)
        grey = tf.concat([luma, luma, luma], axis=-1)
        return tf.where((spread == 0)[:, None, None, None], grey, restored)

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]


def build_dejpeg_q(
    half_channels: int = 32,
    quarter_channels: int = 96,
    quarter_blocks: int = 4,
    condition_units: int = 64,
    name: str = "dejpeg_q",
    eighth_channels: int = 0,
    eighth_blocks: int = 0,
) -> keras.Model:
    """`dejpeg` told the file's quantisation tables, then projected onto them.

    The convolutions keep `dejpeg`'s names and shapes, so its trained weights load into them
    (`load_body_weights`); the condition enters as FiLM on the half- and quarter-resolution
    features through zero-initialised heads, so a fresh model starts exactly as the base net.
    Input H and W must be multiples of 16 and start on the file's block grid (4:2:0 chroma).
    """
    conv = lambda ch, k=3, **kw: layers.Conv2D(ch, k, padding="same", **kw)  # noqa: E731
    image = keras.Input(shape=(None, None, 3), name="image")
    quantization = keras.Input(shape=(QUANTIZATION_LENGTH,), name="quantization")
    hidden = QuantizationFeatures(name="q_features")(quantization)
    hidden = layers.Dense(condition_units, activation="relu", name="q_dense1")(hidden)
    hidden = layers.Dense(condition_units, activation="relu", name="q_dense2")(hidden)

    def film(x, channels: int, label: str):
        params = layers.Dense(2 * channels, kernel_initializer="zeros", name=f"film_{label}")(hidden)
        return FiLM(name=f"film_apply_{label}")([x, params])

    half = SpaceToDepth(2, name="to_half")(image)
    half = conv(half_channels, activation="relu", name="half_in")(half)
    half = conv(half_channels, activation="relu", name="half_enc1")(half)
    skip = conv(half_channels, activation="relu", name="half_enc2")(half)
    skip = film(skip, half_channels, "skip")

    quarter = SpaceToDepth(2, name="to_quarter")(skip)
    quarter = conv(quarter_channels, 1, activation="relu", name="quarter_in")(quarter)
    quarter = film(quarter, quarter_channels, "quarter_in")
    if eighth_blocks:
        quarter = _eighth_branch(quarter, quarter_channels, eighth_channels, eighth_blocks)
    for i in range(quarter_blocks):
        quarter = conv(quarter_channels, activation="relu", name=f"quarter_{i}")(quarter)
        if i % 2 == 1:
            quarter = film(quarter, quarter_channels, f"quarter_{i}")
    up = conv(half_channels * 4, 1, name="quarter_out")(quarter)
    up = DepthToSpace(2, name="to_half_again")(up)

    half = layers.Add(name="skip")([up, skip])
    half = layers.ReLU(name="skip_relu")(half)
    half = conv(half_channels, activation="relu", name="half_dec")(half)
    half = film(half, half_channels, "half_dec")
    correction = conv(12, kernel_initializer="zeros", bias_initializer="zeros", name="half_out")(half)
    correction = DepthToSpace(2, name="to_full")(correction)
    restored = layers.Add(name="residual")([image, correction])
    projected = JpegProjection(name="projection")([restored, image, quantization])
    answer = KeepNeutral(name="keep_neutral")([projected, image])
    return keras.Model([image, quantization], answer, name=name)


def _eighth_branch(quarter, quarter_channels: int, channels: int, blocks: int):
    """A residual detour through 1/8 resolution: reach and capacity at a 64th of the pixels.

    Its last convolution starts at zero, so trained `dejpeg_q` weights load into the rest of the
    net (`load_grown_weights`) and the grown net starts out computing exactly what they did.
    """
    conv = lambda ch, k=3, **kw: layers.Conv2D(ch, k, padding="same", **kw)  # noqa: E731
    eighth = SpaceToDepth(2, name="to_eighth")(quarter)
    eighth = conv(channels, 1, activation="relu", name="eighth_in")(eighth)
    for i in range(blocks):
        eighth = conv(channels, activation="relu", name=f"eighth_{i}")(eighth)
    back = conv(quarter_channels * 4, 1, kernel_initializer="zeros", bias_initializer="zeros", name="eighth_out")(eighth)
    back = DepthToSpace(2, name="to_quarter_again")(back)
    return layers.Add(name="eighth_skip")([quarter, back])


class BicubicUpsample(layers.Layer):
    """Enlarge by an integer `scale` with bicubic interpolation: the base an upscaler corrects."""

    def __init__(self, scale: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, x):
        import tensorflow as tf

        size = tf.shape(x)[1:3] * self.scale
        return tf.image.resize(x, size, method="bicubic")

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        s = self.scale
        return (n, None if h is None else h * s, None if w is None else w * s, c)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


def build_upscaler(
    scale: int,
    head_channels: int = 48,
    head_blocks: int = 4,
    name: str | None = None,
    restorer: keras.Model | None = None,
) -> keras.Model:
    """Restore the small image with `dejpeg_q` (told its tables), then enlarge it `scale` times.

    The enlargement is bicubic plus a learned correction: a few convolutions at the input's
    resolution whose last one (zero-initialised) predicts `scale`x`scale` sub-pixels per pixel,
    rearranged by depth-to-space. An untrained upscaler is therefore exactly "restore, then
    bicubic", and all its convolutions run at the small image's resolution. The restorer is a
    nested model named `restorer`, so trained `dejpeg_q` weights load into it as they are.
    """
    if scale not in (2, 3, 4):
        raise ValueError(f"scale must be 2, 3 or 4, got {scale}")
    conv = lambda ch, k=3, **kw: layers.Conv2D(ch, k, padding="same", **kw)  # noqa: E731
    image = keras.Input(shape=(None, None, 3), name="image")
    quantization = keras.Input(shape=(QUANTIZATION_LENGTH,), name="quantization")
    restorer = restorer or build_dejpeg_q(name="restorer")
    restored = restorer([image, quantization])

    x = conv(head_channels, activation="relu", name="up_in")(restored)
    features = x
    for i in range(head_blocks):
        x = conv(head_channels, activation="relu", name=f"up_{i}")(x)
    x = layers.Add(name="up_skip")([x, features])
    sub_pixels = conv(3 * scale * scale, kernel_initializer="zeros", bias_initializer="zeros", name="up_out")(x)
    detail = DepthToSpace(scale, name="to_output")(sub_pixels)
    base = BicubicUpsample(scale, name="bicubic")(restored)
    enlarged = layers.Add(name="enlarged")([base, detail])
    answer = KeepNeutral(name="keep_neutral")([enlarged, image])
    return keras.Model([image, quantization], answer, name=name or f"upscale_x{scale}")


def load_restorer_weights(model: keras.Model, weights: str) -> None:
    """Fill an upscaler's nested `restorer` from a trained `dejpeg_q` (a .weights.h5 file)."""
    model.get_layer("restorer").load_weights(weights)


def holds_upscaler(weights: str) -> bool:
    """Whether a .weights.h5 file is a whole upscaler's (to continue it), not a restorer's.

    Keras stores a nested model as a `functional` group; only an upscaler nests one.
    """
    import h5py

    with h5py.File(weights, "r") as stored:
        return "functional" in stored["layers"]


def load_init_weights(model: keras.Model, weights: str, scale: int) -> None:
    """Start a training run from `weights`: a served SavedModel folder's convolutions, a trained
    restorer's .weights.h5 for an upscaler's front, a wider upscaler's .weights.h5 for a narrower
    head (`head_pruning`), or a same-architecture .weights.h5 to continue."""
    from enhancer.training import head_pruning

    if Path(weights).is_dir():
        load_body_weights(model, weights)
    elif scale > 1 and not holds_upscaler(weights):
        load_restorer_weights(model, weights)
    elif scale > 1 and head_pruning.stored_head(weights)[0] != head_pruning.head_of(model)[0]:
        head_pruning.load_pruned(model, weights, scale)
    elif scale == 1 and _stored_convolutions(weights) < _convolutions(model):
        load_grown_weights(model, weights)
    else:
        model.load_weights(weights)


def _convolutions(model: keras.Model) -> int:
    return sum(isinstance(layer, layers.Conv2D) for layer in model.layers)


def _stored_convolutions(weights: str) -> int:
    """How many convolutions a .weights.h5 file holds (Keras names them conv2d, conv2d_1, ...)."""
    import h5py

    with h5py.File(weights, "r") as stored:
        return sum(name.startswith("conv2d") for name in stored["layers"])


def load_grown_weights(model: keras.Model, weights: str) -> list[str]:
    """Start a grown restorer (`dejpeg_q_deep`) from a trained `dejpeg_q` .weights.h5.

    Keras stores layers by position, so the file is read into the net it came from and copied
    across by layer name; the layers only the grown net has keep their initialisation (its
    detour's last convolution is zero, so the grown net starts out as the trained one).
    Returns the names of the layers filled.
    """
    source = build_dejpeg_q()
    source.load_weights(weights)
    filled = []
    for layer in source.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
            filled.append(layer.name)
    return filled


def load_body_weights(model: keras.Model, saved_model_dir: str) -> list[str]:
    """Copy a `dejpeg` SavedModel's convolution weights into the same-named layers of `model`.

    Keras 3 stores a functional model's layers by position (`model/_operations/<i>/...`); the
    positions are those of `build_dejpeg()`. Returns the names of the layers filled.
    """
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(saved_model_dir) + "/variables/variables")
    base = build_dejpeg()
    filled = []
    for i, layer in enumerate(base.layers):
        if isinstance(layer, layers.Conv2D):
            prefix = f"model/_operations/{i}"
            kernel = reader.get_tensor(f"{prefix}/_kernel/.ATTRIBUTES/VARIABLE_VALUE")
            bias = reader.get_tensor(f"{prefix}/bias/.ATTRIBUTES/VARIABLE_VALUE")
            model.get_layer(layer.name).set_weights([kernel, bias])
            filled.append(layer.name)
    return filled


ARCHITECTURES = {
    "dejpeg": build_dejpeg,
    "dejpeg_q": build_dejpeg_q,
    # `dejpeg_q` grown by a detour through 1/8 resolution (started from a trained `dejpeg_q`).
    "dejpeg_q_deep": lambda: build_dejpeg_q(eighth_channels=96, eighth_blocks=3, name="dejpeg_q_deep"),
    "prototype": build_prototype,
    "upscale_x2": lambda: build_upscaler(2, head_channels=40, head_blocks=4),
    "upscale_x4": lambda: build_upscaler(4, head_channels=56, head_blocks=6),
    # The same nets with narrower heads, for the speed targets (started by `head_pruning`).
    "upscale_x2_slim": lambda: build_upscaler(2, head_channels=32, head_blocks=4, name="upscale_x2_slim"),
    "upscale_x4_slim": lambda: build_upscaler(4, head_channels=48, head_blocks=6, name="upscale_x4_slim"),
}

#: Architectures told the file's quantisation tables (a second input, `quantization`): the
#: conditioned restorers and every upscaler, which nests one.
CONDITIONED = frozenset(name for name in ARCHITECTURES if name.startswith(("dejpeg_q", "upscale_")))
#: A conditioned net's height/width multiple: its projection works on 4:2:0 chroma blocks (16 px).
CONDITIONED_SIZE_MULTIPLE = 16


def takes_quantization(model: keras.Model) -> bool:
    """Whether the net is told the file's tables (its second input)."""
    return len(model.inputs) > 1


def size_multiple(model: keras.Model) -> int:
    """The height/width multiple the net needs (what export declares and pads to)."""
    return CONDITIONED_SIZE_MULTIPLE if takes_quantization(model) else SIZE_MULTIPLE


def output_scale(model: keras.Model) -> int:
    """How many times larger than its input the net's output is (1 for the restorers)."""
    probe = _probe_inputs(model, 32, keras.KerasTensor)
    if isinstance(probe, list):
        probe[1] = keras.KerasTensor(probe[1].shape)
    return int(model.compute_output_spec(probe).shape[1]) // 32


def build(architecture: str) -> keras.Model:
    """Build a network by name (see ARCHITECTURES)."""
    try:
        return ARCHITECTURES[architecture]()
    except KeyError:
        raise ValueError(f"unknown architecture {architecture!r}; choose from {sorted(ARCHITECTURES)}") from None


def _probe_inputs(model: keras.Model, size: int, make):
    """Inputs for `model` at `size` x `size`: `make(shape)` for the image, IJG quality-50 4:2:0
    tables for a conditioned model's second input (so its projection is active)."""
    if len(model.inputs) == 1:
        return make((1, size, size, 3))
    from enhancer.training.jpeg_damage import ijg_recipe

    return [make((1, size, size, 3)), ijg_recipe(50).condition()[None]]


def macs_per_pixel(model: keras.Model) -> float:
    """Multiply-accumulates per input pixel, counted from the conv layers' shapes."""
    probe_size = 64
    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.Model):  # a nested net (an upscaler's restorer) sees the input
            total += macs_per_pixel(layer)
        elif isinstance(layer, layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            inputs = _probe_inputs(model, probe_size, keras.KerasTensor)
            if isinstance(inputs, list):
                inputs[1] = keras.KerasTensor(inputs[1].shape)
            spec = keras.Model(model.inputs if len(model.inputs) > 1 else model.input, layer.output).compute_output_spec(inputs)
            total += kh * kw * cin * cout * (spec.shape[1] * spec.shape[2]) / probe_size**2
    return total


def receptive_field_reach(model: keras.Model, size: int = 192) -> int:
    """How far (in pixels) an input change can travel to the output, measured with a gradient.

    The tiler's overlap must be at least this, or tile borders would be computed without the
    context the net would have seen on the whole image. Weights are randomised on a copy first
    (a zero-initialised last layer would hide every path). A conditioned model is measured with
    its projection active, whose 8x8 and (4:2:0 chroma) 16x16 blocks widen the reach.
    """
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    # Every layer class this module defines, so a new one cannot be forgotten here.
    custom = {name: obj for name, obj in globals().items()
              if isinstance(obj, type) and issubclass(obj, layers.Layer) and obj.__module__ == __name__}  # fmt: skip
    with keras.saving.custom_object_scope(custom):  # nested nets are rebuilt from config
        probe = keras.models.clone_model(model)
    probe.set_weights([rng.normal(0, 0.1, w.shape).astype("float32") for w in probe.get_weights()])
    inputs = _probe_inputs(model, size, lambda shape: rng.uniform(0.2, 0.8, shape).astype("float32"))
    x = tf.Variable(inputs[0] if isinstance(inputs, list) else inputs)
    scale = output_scale(model)
    reach = 0
    for c in size // 2 + np.arange(16):  # every phase of the block grid
        with tf.GradientTape() as tape:
            y = probe([x, tf.constant(inputs[1])] if isinstance(inputs, list) else x, training=False)
            target = tf.reduce_sum(y[0, c * scale : (c + 1) * scale, c * scale : (c + 1) * scale, :])
        grad = tape.gradient(target, x).numpy()[0]
        touched = np.argwhere(np.abs(grad).sum(-1) > 0)
        reach = max(reach, int(np.abs(touched - c).max()))
    return reach


__all__ = [
    "ARCHITECTURES",
    "SIZE_MULTIPLE",
    "build",
    "build_dejpeg",
    "build_prototype",
    "build_upscaler",
    "macs_per_pixel",
    "output_scale",
    "receptive_field_reach",
]
