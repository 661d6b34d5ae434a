"""The one model contract: what a model folder declares, and what the server may ask of a model.

A model folder holds a TensorFlow SavedModel and a `metadata.json`. The SavedModel's
`serving_default` signature takes float32 `images` [N, H, W, 3] in [0, 1] plus, for every extra
input the metadata declares, a float32 [N, length] tensor of the same name (one row per image in
the batch), and returns float32 `enhanced` [N, H * scale, W * scale, 3] in [0, 1].

`metadata.json` tells the server how to feed the model (`ModelSpec`): it is written by
`enhancer.training.export`, read by the server and by `enhancer.training.evaluate`, and nothing
else repeats these facts. This module imports no TensorFlow, so the batcher, tiling and tests can
use it freely.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Protocol, runtime_checkable

import numpy as np

#: The SavedModel signature the server calls (also what TensorFlow Serving dispatches to).
SIGNATURE_KEY = "serving_default"
#: The signature's image input and its output.
INPUT_KEY = "images"
OUTPUT_KEY = "enhanced"
#: The file beside saved_model.pb that holds the ModelSpec's fields.
METADATA_FILE = "metadata.json"
#: The extra input of models told how a JPEG file was compressed, and its length: the file's luma
#: table (64 steps, natural row-major 8x8 order), its chroma table (64, the Cb component's), then
#: the horizontal and vertical sampling factors of luma over chroma (2, 2 for 4:2:0). Zero means
#: unknown: all zeros for an image that is not a JPEG file, zero chroma steps for a greyscale JPEG.
QUANTIZATION_KEY = "quantization"
QUANTIZATION_LENGTH = 130
#: `size_multiple` of models exported before the metadata recorded it (the dejpeg net's two
#: space-to-depth steps); only used when the key is missing.
LEGACY_SIZE_MULTIPLE = 4


class ModelLoadError(RuntimeError):
    """A model folder is missing, or does not keep the contract (signature or metadata)."""


@dataclass(frozen=True)
class ModelSpec:
    """How the server must feed one model, as its folder's metadata.json declares it."""

    #: The model's name: its folder's name. Requests choose a model by it.
    name: str
    #: Receptive-field reach in input pixels: the tile overlap must be at least this, or seams show.
    reach: int
    #: Output pixels per input pixel along each side (1: restoration, 2 or 4: super-resolution).
    scale: int = 1
    #: Tile sides and tile origins (in image coordinates) must be multiples of this: the net is
    #: only shift-equivariant in these steps, so aligned tiles agree with an untiled run.
    size_multiple: int = LEGACY_SIZE_MULTIPLE
    #: Extra inputs beyond `images`: name -> length of the float32 vector given per image.
    inputs: Mapping[str, int] = field(default_factory=dict)
    #: For a model told the file's quantisation steps: (JPEG quality, factor) points, ascending in
    #: quality. Under strength auto the model is told the file's steps times the factor at the file's
    #: quality (linear between points, the end points' factors beyond them; empty: the file's own
    #: steps). A restorer trained mostly on heavy damage over-restores good files, whose content
    #: (grain, an earlier JPEG's blocks) it takes for damage; smaller steps also narrow its
    #: projection. Chosen on the validation set (enhancer.training.step_calibration).
    auto_step_scale: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        for name in ("reach", "scale", "size_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "reach" else 1):
                raise ValueError(f"model {self.name!r}: {name} must be an integer >= {0 if name == 'reach' else 1}, got {value!r}")
        inputs = dict(self.inputs)
        for key, length in inputs.items():
            if not key.isidentifier() or key == INPUT_KEY:
                raise ValueError(f"model {self.name!r}: extra input name {key!r} must be an identifier other than {INPUT_KEY!r}")
            if not isinstance(length, int) or isinstance(length, bool) or length < 1:
                raise ValueError(f"model {self.name!r}: extra input {key!r} needs a length >= 1, got {length!r}")
        object.__setattr__(self, "inputs", MappingProxyType(inputs))  # frozen all the way down
        points = tuple((p[0], float(p[1])) for p in self.auto_step_scale) if _is_points(self.auto_step_scale) else None
        if points is None or any(not 0 < f <= 4 for _, f in points) or any(
            not 1 <= q <= 100 or (i and q <= points[i - 1][0]) for i, (q, _) in enumerate(points)
        ):
            raise ValueError(
                f"model {self.name!r}: auto_step_scale must be [quality, factor] pairs with integer qualities "
                f"1-100 ascending and factors in (0, 4], got {self.auto_step_scale!r}"
            )
        object.__setattr__(self, "auto_step_scale", points)

    def step_factor(self, quality: int) -> float:
        """The factor on a file's steps at JPEG `quality` under strength auto (`auto_step_scale`)."""
        if not self.auto_step_scale:
            return 1.0
        qualities, factors = zip(*self.auto_step_scale)
        return float(np.interp(quality, qualities, factors))

    def metadata(self) -> dict:
        """The metadata.json keys that declare this spec (the name is the folder's, not stored)."""
        meta = {"scale": self.scale, "reach": self.reach, "size_multiple": self.size_multiple, "inputs": dict(self.inputs)}
        if self.auto_step_scale:
            meta["auto_step_scale"] = [list(point) for point in self.auto_step_scale]
        return meta

    def check_tiling(self, tile_size: int, tile_overlap: int, setting: str | None = None) -> None:
        """Refuse tile settings this model cannot be served with (called at start-up); `setting`:
        the variable that set `tile_size`, for the message (default: the one for the model's scale)."""
        setting = setting or ("ENHANCER_TILE_SIZE" if self.scale == 1 else "ENHANCER_UPSCALE_TILE_SIZE")
        if tile_size % self.size_multiple:
            raise ValueError(
                f"{setting} ({tile_size}) must be a multiple of {self.size_multiple}, the size "
                f"multiple of model {self.name!r}"
            )
        if 2 * tile_overlap > tile_size:
            raise ValueError(
                f"model {self.name!r} needs a tile overlap of {tile_overlap} px, more than half its tile "
                f"size ({tile_size}): tiles would be mostly overlap; raise {setting}"
            )
        if tile_overlap < self.reach:
            raise ValueError(
                f"ENHANCER_TILE_OVERLAP ({tile_overlap}) is below the receptive-field reach of model "
                f"{self.name!r} ({self.reach} px): tiles would show seams; set it to at least {self.reach}"
            )


def _is_points(value) -> bool:
    """Whether `value` is a sequence of (integer, number) pairs (JSON's lists included)."""
    def number(x, integer):
        return isinstance(x, int if integer else (int, float)) and not isinstance(x, bool)

    return isinstance(value, (list, tuple)) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and number(p[0], True) and number(p[1], False) for p in value
    )


def read_spec(model_dir: Path) -> ModelSpec:
    """The ModelSpec of the model folder `model_dir`, from its metadata.json.

    Accepts the key `receptive_field_reach` for `reach` (what exports before the contract wrote);
    a missing `scale` is 1, a missing `size_multiple` LEGACY_SIZE_MULTIPLE, missing `inputs` and
    `auto_step_scale` none.
    """
    model_dir = Path(model_dir)
    path = model_dir / METADATA_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(
            f"{model_dir} has no {METADATA_FILE}: the server needs at least the model's receptive-field "
            'reach there, e.g. {"reach": 29}; export the model with enhancer.training.export'
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} cannot be read as JSON: {exc}") from None
    reach = meta.get("reach", meta.get("receptive_field_reach"))
    if reach is None:
        raise ModelLoadError(
            f"{path} does not declare the model's receptive-field reach ('reach', in input pixels); "
            "the server checks the tile overlap against it"
        )
    try:
        return ModelSpec(
            name=model_dir.name,
            reach=reach,
            scale=meta.get("scale", 1),
            size_multiple=meta.get("size_multiple", LEGACY_SIZE_MULTIPLE),
            inputs=meta.get("inputs") or {},
            auto_step_scale=meta.get("auto_step_scale") or (),
        )
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: {exc}") from None


@runtime_checkable
class Model(Protocol):
    """Everything the server reads from a loaded model (see enhancer.models.saved_model)."""

    spec: ModelSpec
    #: Where it runs, in words (logs, /readyz).
    device: str
    #: "cpu" or "gpu": picks the tile and batch defaults (enhancer.config.device_defaults).
    device_kind: str
    #: What the model's arithmetic really is on this device (logs).
    precision: str

    def forward(self, batch: np.ndarray, inputs: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """[N, h, w, 3] float32 in [0, 1], plus one [N, length] row block per extra input ->
        [N, h * scale, w * scale, 3], in the order of the inputs."""
        ...

    def warm_up(self, shapes: Iterable[tuple[int, int]], max_batch_size: int) -> float:
        """Run the given tile shapes once before serving; returns the seconds spent."""
        ...
