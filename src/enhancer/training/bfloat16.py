"""How much a model's answers change when its math runs in bfloat16, measured without bfloat16 hardware.

oneDNN's BF16 math mode (what `ENHANCER_PRECISION=bfloat16` and `auto` turn on, see
enhancer.precision) rounds the float32 inputs and weights of every convolution and matmul to
bfloat16 and accumulates the products in float32; everything else stays float32. The product of
two bfloat16 numbers is exact in float32, so the same arithmetic can be reproduced on any CPU: the
served graph (the SavedModel's own signature, weights frozen in) with a float32 -> bfloat16 ->
float32 cast pair (round to nearest even, as oneDNN converts) in front of each such input.
What this cannot reproduce is the order in which a bfloat16 kernel sums the products, a float32
rounding effect far below the bfloat16 one.

`measure_psnr_change` compares that against the plain float32 signature on a few validation crops
at JPEG q10 and q90; `enhancer export` records the result in metadata.json under "bfloat16", and
`auto` refuses bfloat16 for a model whose change is over enhancer.precision.MAX_BFLOAT16_PSNR_CHANGE_DB.

Where `auto` takes TensorFlow's bfloat16 graph rewrite instead (any CPU with avx512_bf16), it cannot
be emulated this way (it stores activations in bfloat16 too) but can be run:
`measure_rewrite_change` runs it for real there, on the crops benchmarks/drivers/precision.py
uses (256 px; an upscaler's input that crop made smaller by area, clean and at q75, where its change
is largest), and export records it under "bfloat16"/"graph_rewrite".
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import node_def_pb2, types_pb2
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from enhancer.models.contract import INPUT_KEY, METADATA_FILE, OUTPUT_KEY, QUANTIZATION_KEY, SIGNATURE_KEY, read_spec
from enhancer.precision import (
    METADATA_KEY,
    REWRITE_ALLOWLIST_REMOVE_VARIABLE,
    REWRITE_KEEPS_FLOAT32,
    REWRITE_METADATA_KEY,
    REWRITE_OPTION,
    cpu_bfloat16_flags,
    read_cpuinfo,
)
from enhancer.training.dataset import centre_crop, psnr

#: Ops oneDNN's BF16 math mode computes from bfloat16 inputs, and which of their inputs it rounds
#: (None: all of them).
ROUNDED_OPS: dict[str, tuple[int, ...] | None] = {
    "Conv2D": (0, 1),
    "Conv3D": (0, 1),
    "DepthwiseConv2dNative": (0, 1),
    "MatMul": (0, 1),
    "BatchMatMul": (0, 1),
    "BatchMatMulV2": (0, 1),
    "BatchMatMulV3": (0, 1),
    "Einsum": None,
}
METHOD = (
    "emulated: the served graph with the float32 inputs and weights of every convolution and matmul "
    "rounded to bfloat16 (round to nearest even) and float32 accumulation, as oneDNN's BF16 math mode "
    "computes; not run on bfloat16 hardware"
)
QUALITIES = (10, 90)
CROP = 256


def _float32(node: node_def_pb2.NodeDef) -> bool:
    dtype_attr = "T" if "T" in node.attr else "Ta"
    return node.attr[dtype_attr].type == types_pb2.DT_FLOAT


def round_math_inputs(graph_def, ops: dict[str, tuple[int, ...] | None] = ROUNDED_OPS):
    """A copy of `graph_def` with a bfloat16 round trip in front of the inputs of `ops`; returns it
    and how many nodes were changed (zero means nothing was emulated)."""
    graph_def = copy.deepcopy(graph_def)
    added, changed = [], 0
    for node in graph_def.node:
        if node.op not in ops or not _float32(node):
            continue
        data_inputs = [i for i, name in enumerate(node.input) if not name.startswith("^")]
        chosen = ops[node.op]
        changed += 1
        for i in data_inputs if chosen is None else chosen:
            down = node_def_pb2.NodeDef(name=f"{node.name}/bf16_{i}/down", op="Cast", input=[node.input[i]])
            down.attr["SrcT"].type, down.attr["DstT"].type = types_pb2.DT_FLOAT, types_pb2.DT_BFLOAT16
            down.attr["Truncate"].b = False
            up = node_def_pb2.NodeDef(name=f"{node.name}/bf16_{i}/up", op="Cast", input=[down.name])
            up.attr["SrcT"].type, up.attr["DstT"].type = types_pb2.DT_BFLOAT16, types_pb2.DT_FLOAT
            up.attr["Truncate"].b = False
            node.input[i] = up.name
            added += [down, up]
    graph_def.node.extend(added)
    return graph_def, changed


class SignaturePair:
    """A model folder's `serving_default` as served (float32) and with bfloat16 math emulated."""

    def __init__(self, model_dir: Path):
        self.spec = read_spec(Path(model_dir))
        self._loaded = tf.saved_model.load(str(model_dir))
        self._serve = self._loaded.signatures[SIGNATURE_KEY]
        self.input_names = [INPUT_KEY, *self.spec.inputs]
        frozen = convert_variables_to_constants_v2(self._serve)
        rewritten, self.rounded_ops = round_math_inputs(frozen.graph.as_graph_def())
        if not self.rounded_ops:
            raise ValueError(f"{model_dir}: no convolution or matmul found to emulate bfloat16 math on")
        output = dict(zip(sorted(self._serve.structured_outputs), frozen.outputs))[OUTPUT_KEY].name  # nest order

        def imported():
            tf.compat.v1.import_graph_def(rewritten, name="")

        wrapped = tf.compat.v1.wrap_function(imported, [])
        self._emulated = wrapped.prune(
            feeds=[wrapped.graph.as_graph_element(f"{name}:0") for name in self.input_names],
            fetches=[wrapped.graph.as_graph_element(output)],
        )

    def float32(self, images: np.ndarray, quantization: np.ndarray | None = None) -> np.ndarray:
        return self._serve(**_feeds(self.spec, images, quantization))[OUTPUT_KEY].numpy()

    def bfloat16(self, images: np.ndarray, quantization: np.ndarray | None = None) -> np.ndarray:
        feeds = _feeds(self.spec, images, quantization)
        return self._emulated(*(feeds[name] for name in self.input_names))[0].numpy()


def _feeds(spec, images: np.ndarray, quantization: np.ndarray | None) -> dict[str, tf.Tensor]:
    """The signature's inputs by name: the images, and the tables for a model told them."""
    feeds = {INPUT_KEY: tf.constant(np.asarray(images, np.float32))}
    if QUANTIZATION_KEY in spec.inputs:
        feeds[QUANTIZATION_KEY] = tf.constant(np.asarray(quantization, np.float32))
    return feeds


def measure_psnr_change(
    model_dir: Path, photos_bgr: Sequence[np.ndarray], qualities: Sequence[int] = QUALITIES, crop: int = CROP
) -> dict:
    """PSNR against the clean crop, float32 vs emulated bfloat16, per JPEG quality (mean over
    photos); `psnr_change_db` is the per-quality change of largest magnitude (bfloat16 minus float32)."""
    import cv2

    from enhancer.models.contract import read_spec
    from enhancer.training import jpeg_damage
    from enhancer.training.upscale_data import downscale

    if not photos_bgr:
        raise ValueError("no photos to measure the bfloat16 change on")
    pair = SignaturePair(model_dir)
    scale = read_spec(Path(model_dir)).scale  # an upscaler gets the crop made `scale` times smaller
    per_quality, closest = {}, float("inf")
    for q in qualities:
        recipe = jpeg_damage.ijg_recipe(q)
        f32_scores, bf16_scores = [], []
        for photo in photos_bgr:
            clean_bgr = centre_crop(photo, crop * scale)
            clean_bgr = clean_bgr[: clean_bgr.shape[0] // (16 * scale) * 16 * scale, : clean_bgr.shape[1] // (16 * scale) * 16 * scale]
            small_bgr = clean_bgr if scale == 1 else downscale(clean_bgr, scale, "pil_bicubic")
            damaged_bgr = jpeg_damage.jpeg_round_trip(small_bgr, recipe)
            clean, damaged = (cv2.cvtColor(im, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0 for im in (clean_bgr, damaged_bgr))
            table = recipe.condition()[None]
            f32 = pair.float32(damaged[None], table)[0]
            bf16 = pair.bfloat16(damaged[None], table)[0]
            f32_scores.append(psnr(f32, clean))
            bf16_scores.append(psnr(bf16, clean))
            closest = min(closest, psnr(bf16, f32))
        per_quality[f"q{q}"] = {
            "float32_psnr_db": round(float(np.mean(f32_scores)), 5),
            "bfloat16_psnr_db": round(float(np.mean(bf16_scores)), 5),
            "change_db": round(float(np.mean(bf16_scores) - np.mean(f32_scores)), 5),
        }
    worst = max((row["change_db"] for row in per_quality.values()), key=abs)
    return {
        "psnr_change_db": worst,
        "per_quality": per_quality,
        "lowest_psnr_bfloat16_vs_float32_db": round(closest, 2) if np.isfinite(closest) else None,
        "method": f"{METHOD}; {pair.rounded_ops} ops rounded",
        "images": f"{len(photos_bgr)} validation photos, centre crops up to {crop} px"
        + (f" (made {scale} times smaller from crops {scale} times larger)" if scale > 1 else "")
        + f", JPEG q{' and q'.join(map(str, qualities))}",
        "measured": time.strftime("%Y-%m-%d"),
    }


class RewritePair:
    """A model folder's `serving_default` run in float32 and through TensorFlow's bfloat16 graph
    rewrite: two loaded copies, each first run (and so rewritten, or not) under its own setting of
    Grappler's process-wide switch, which is set before every call as the server's runner does."""

    def __init__(self, model_dir: Path):
        self.spec = read_spec(Path(model_dir))
        os.environ.setdefault(REWRITE_ALLOWLIST_REMOVE_VARIABLE, REWRITE_KEEPS_FLOAT32)
        self._plain = tf.saved_model.load(str(model_dir)).signatures[SIGNATURE_KEY]
        self._rewritten = tf.saved_model.load(str(model_dir)).signatures[SIGNATURE_KEY]

    def _run(self, rewrite: bool, images: np.ndarray, quantization: np.ndarray | None) -> np.ndarray:
        tf.config.optimizer.set_experimental_options({REWRITE_OPTION: rewrite})
        try:
            serve = self._rewritten if rewrite else self._plain
            return serve(**_feeds(self.spec, images, quantization))[OUTPUT_KEY].numpy()
        finally:
            tf.config.optimizer.set_experimental_options({REWRITE_OPTION: False})

    def float32(self, images: np.ndarray, quantization: np.ndarray | None = None) -> np.ndarray:
        return self._run(False, images, quantization)

    def bfloat16(self, images: np.ndarray, quantization: np.ndarray | None = None) -> np.ndarray:
        return self._run(True, images, quantization)


def measure_rewrite_change(model_dir: Path, photos_bgr: Sequence[np.ndarray], crop: int = CROP) -> dict:
    """The graph rewrite's PSNR change on the validation crops, run for real (call it only on a CPU
    with avx512_bf16 or AMX, in a process without oneDNN's BF16 math mode): a restorer at JPEG q10
    and q90, an upscaler on its small image clean and at q75; `psnr_change_db` is the change of
    largest magnitude, per kind in `per_kind_db`."""
    import cv2

    from enhancer.conditioning import no_damage_vector
    from enhancer.training import jpeg_damage

    if not photos_bgr:
        raise ValueError("no photos to measure the bfloat16 change on")
    pair = RewritePair(model_dir)
    scale = pair.spec.scale
    kinds = {"q10": 10, "q90": 90} if scale == 1 else {"clean": None, "q75": 75}
    per_kind, closest = {}, float("inf")
    for kind, quality in kinds.items():
        changes = []
        for photo in photos_bgr:
            # the crops benchmarks/drivers/precision.py measures on: `crop` px, an upscaler's input
            # that crop made `scale` times smaller by area (small images: the harder case for it)
            clean_bgr = centre_crop(photo, crop)
            clean_bgr = clean_bgr[: clean_bgr.shape[0] // (16 * scale) * 16 * scale, : clean_bgr.shape[1] // (16 * scale) * 16 * scale]
            h, w = clean_bgr.shape[:2]
            small_bgr = clean_bgr if scale == 1 else cv2.resize(clean_bgr, (w // scale, h // scale), interpolation=cv2.INTER_AREA)
            if quality is None:
                damaged_bgr, table = small_bgr, no_damage_vector()[None]
            else:
                recipe = jpeg_damage.ijg_recipe(quality)
                damaged_bgr, table = jpeg_damage.jpeg_round_trip(small_bgr, recipe), recipe.condition()[None]
            clean, damaged = (cv2.cvtColor(im, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0 for im in (clean_bgr, damaged_bgr))
            f32 = np.clip(pair.float32(damaged[None], table)[0], 0, 1)
            bf16 = np.clip(pair.bfloat16(damaged[None], table)[0], 0, 1)
            changes.append(psnr(bf16, clean) - psnr(f32, clean))
            closest = min(closest, psnr(bf16, f32))
        per_kind[kind] = round(float(np.mean(changes)), 5)
    return {
        "psnr_change_db": max(per_kind.values(), key=abs),
        "per_kind_db": per_kind,
        "lowest_psnr_bfloat16_vs_float32_db": round(closest, 2) if np.isfinite(closest) else None,
        "method": "run: TensorFlow's bfloat16 graph rewrite of the convolutions on this CPU "
        f"({', '.join(cpu_bfloat16_flags(read_cpuinfo())) or 'no bfloat16 flags'})",
        "measured": time.strftime("%Y-%m-%d"),
    }


def record(model_dir: Path, measurement: dict) -> Path:
    """Write `measurement` into the model folder's metadata.json under "bfloat16" (atomically)."""
    path = Path(model_dir) / METADATA_FILE
    meta = json.loads(path.read_text())
    meta[METADATA_KEY] = measurement
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, path)
    return path
