"""Export a trained Keras network as a model folder the server (and TF Serving) loads.

It writes the project's one model contract (enhancer.models.contract): the SavedModel's
`serving_default` takes float32 `images` [N, H, W, 3] in [0, 1] of any batch, height and width,
and returns `enhanced` (`scale` times larger for an upscaler), clipped to [0, 1]; metadata.json declares the ModelSpec
fields (scale, receptive-field reach, size multiple, extra inputs). Padding to the net's size
multiple happens inside the signature, so a caller never needs to know the architecture.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import keras
import tensorflow as tf

from enhancer.models.contract import (
    INPUT_KEY,
    METADATA_FILE,
    OUTPUT_KEY,
    QUANTIZATION_KEY,
    QUANTIZATION_LENGTH,
    SIGNATURE_KEY,
    ModelSpec,
)
from enhancer.training.network import output_scale, receptive_field_reach, size_multiple, takes_quantization


def _pad_to_multiple(images: tf.Tensor, multiple: int) -> tf.Tensor:
    """Edge-replicate rows/columns up to a multiple (works even for a 1x1 image)."""
    h, w = tf.shape(images)[1], tf.shape(images)[2]
    pad_h = (multiple - h % multiple) % multiple
    pad_w = (multiple - w % multiple) % multiple
    images = tf.concat([images, tf.repeat(images[:, -1:, :, :], pad_h, axis=1)], axis=1)
    return tf.concat([images, tf.repeat(images[:, :, -1:, :], pad_w, axis=2)], axis=2)


class _Servable(tf.Module):
    def __init__(self, model: keras.Model, multiple: int, scale: int):
        super().__init__()
        self.model = model
        self.multiple = multiple
        self.scale = scale

    def _run(self, images, *extra):
        h, w = tf.shape(images)[1] * self.scale, tf.shape(images)[2] * self.scale
        padded = _pad_to_multiple(images, self.multiple)
        restored = self.model([padded, *extra] if extra else padded, training=False)
        return {OUTPUT_KEY: tf.clip_by_value(restored[:, :h, :w, :], 0.0, 1.0)}


class _ImagesServable(_Servable):
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name=INPUT_KEY)])
    def serve(self, images):
        return self._run(images)


class _ConditionedServable(_Servable):
    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.float32, name=INPUT_KEY),
        tf.TensorSpec([None, QUANTIZATION_LENGTH], tf.float32, name=QUANTIZATION_KEY),
    ])  # fmt: skip
    def serve(self, images, quantization):
        return self._run(images, quantization)


def export_saved_model(
    model: keras.Model,
    out_dir: Path,
    metadata: dict | None = None,
    *,
    reach: int | None = None,
    measure: Callable[[Path], dict] | None = None,
) -> Path:
    """Write `model` as a SavedModel into `out_dir` (replacing what was there) plus metadata.json,
    which holds `metadata` and the contract's fields. `reach` is measured from the net (with a
    gradient) when not given. The folder's name is the model's name when served. `measure` gets
    the written SavedModel's folder and returns more metadata (the bfloat16 record), so what is
    measured is the exported graph itself.

    Written to a sibling directory first and swapped in, so a server never sees half a model.
    """
    out_dir = Path(out_dir)
    conditioned = takes_quantization(model)
    spec = ModelSpec(
        name=out_dir.name,
        reach=receptive_field_reach(model) if reach is None else reach,
        scale=output_scale(model),
        size_multiple=size_multiple(model),
        inputs={QUANTIZATION_KEY: QUANTIZATION_LENGTH} if conditioned else {},
    )
    servable = (_ConditionedServable if conditioned else _ImagesServable)(model, spec.size_multiple, spec.scale)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tf.saved_model.save(servable, str(tmp), signatures={SIGNATURE_KEY: servable.serve})
    info = {"architecture": model.name, "parameters": int(model.count_params()), **(metadata or {}), **spec.metadata()}
    if any(layer.name == "keep_neutral" for layer in model.layers):
        info["keeps_neutral"] = True  # grey tiles come back grey (network.KeepNeutral)
    (tmp / METADATA_FILE).write_text(json.dumps(info, indent=2) + "\n")
    if measure is not None:
        info.update(measure(tmp))
        (tmp / METADATA_FILE).write_text(json.dumps(info, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
