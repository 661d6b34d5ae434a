"""Extra model inputs, computed per image: the one place that knows how each one is made.

A model's spec may declare inputs beyond the pixels (name -> vector length; see
enhancer.models.contract). For every request the pipeline asks `model_inputs` for one float32
vector per declared input, computed from the image's metadata (e.g. its JPEG file's quantisation
tables); the batcher carries the vectors with the request's tiles and stacks them per batch.
Adding an input is adding its builder to `BUILDERS`: nothing else in the server changes.

The user's restoration strength (`Strength`) is applied here too, because for a model told the
file's tables it is a statement about those tables. "auto" tells the model the file's steps times
the model's own factor for the file's quality (`ModelSpec.auto_step_scale`: smaller steps for good
files, which the restorer would otherwise over-restore); "light" half of auto's steps, "strong"
twice; an image that is not a JPEG file is described as one saved at a fixed quality. "off" at
scale 1 never reaches a model (the input's own pixels are the answer); an upscaling model must
still run, and is told "no compression damage": every one
of the 128 steps 1 and no chroma subsampling, the condition the upscalers were trained with for
clean small images (pure super-resolution).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import numpy as np

from enhancer.errors import InvalidParameterError
from enhancer.imaging import ImageInfo
from enhancer.imaging.jpeg import IJG_CHROMA, ijg_table
from enhancer.models.contract import QUANTIZATION_KEY, QUANTIZATION_LENGTH, ModelSpec


class Strength(str, Enum):
    """How hard to restore (the `strength` query parameter)."""

    auto = "auto"  #: as the file says (JPEG), or as the model judges (other images)
    off = "off"  #: no restoration: the input's own pixels (scale 1), or only enlarged (scale > 1)
    light = "light"  #: weaker than auto
    strong = "strong"  #: stronger than auto


#: Factor on a JPEG file's quantisation steps for each strength the model is told.
TABLE_SCALE = {Strength.light: 0.5, Strength.strong: 2.0}
#: The JPEG quality a non-JPEG image is described as, for the strengths that describe one.
BLIND_QUALITY = {Strength.light: 75, Strength.strong: 25}

#: EXIF orientation -> (stored axes reversed in the upright image as (x, y), rows and columns swapped).
_ORIENTATION = {
    1: ((False, False), False), 2: ((True, False), False), 3: ((True, True), False), 4: ((False, True), False),
    5: ((False, False), True), 6: ((False, True), True), 7: ((True, True), True), 8: ((True, False), True),
}  # fmt: skip


def _grid_survives(info: ImageInfo, sampling: tuple[int, int]) -> bool:
    """Whether the file's block grid still starts at the upright image's origin.

    A flip or rotation reverses a stored axis; the grid stays aligned only when that axis' stored
    length is a whole number of MCUs (8 pixels times the axis' sampling factor), because the
    encoder pads the last MCU at the end.
    """
    (reverse_x, reverse_y), swapped = _ORIENTATION.get(info.orientation, ((False, False), False))
    stored_w, stored_h = (info.height, info.width) if swapped else (info.width, info.height)
    mcu_x, mcu_y = 8 * sampling[0], 8 * sampling[1]
    return not (reverse_x and stored_w % mcu_x) and not (reverse_y and stored_h % mcu_y)


def _swapped(info: ImageInfo) -> bool:
    """Whether the EXIF rotation swapped rows and columns (the upright blocks are the stored ones transposed)."""
    return _ORIENTATION.get(info.orientation, (None, False))[1]


def upright_luma_table(info: ImageInfo) -> np.ndarray | None:
    """The file's luma table as it applies to the upright pixels' 8x8 blocks (transposed when the
    EXIF rotation swapped rows and columns), or None: not a JPEG file, or the rotation moved the
    block grid off the image's origin."""
    jpeg = info.jpeg
    if jpeg is None or not _grid_survives(info, jpeg.sampling):
        return None
    return np.asarray(jpeg.luma_table).T if _swapped(info) else np.asarray(jpeg.luma_table)


def no_damage_vector() -> np.ndarray:
    """The `quantization` input saying "no compression damage": every step 1, sampling (1, 1).

    The same vector the upscalers' training gives clean small images
    (enhancer.training.upscale_data.no_damage_condition), whatever the image's channels.
    """
    vector = np.ones(QUANTIZATION_LENGTH, np.float32)
    vector[128:] = (1, 1)
    return vector


def scale_steps(vector: np.ndarray, factor: float) -> np.ndarray:
    """`vector` with its 128 steps times `factor`, rounded and never below 1; unknown (0) stays 0."""
    if factor == 1.0:
        return vector
    scaled = vector.copy()
    steps = scaled[:128]
    scaled[:128] = np.where(steps > 0, np.clip(np.round(steps * factor), 1, 255), 0)
    return scaled


def quantization_vector(info: ImageInfo, strength: Strength = Strength.auto, spec: ModelSpec | None = None) -> np.ndarray:
    """The `quantization` input (layout in enhancer.models.contract) for this image and model.

    All zeros (the blind path) for an image that is not a JPEG file, or whose EXIF rotation moved
    the file's block grid off the image's origin; tables transposed when the rotation swapped rows
    and columns. `off` (a model that must run without restoring: an upscaler) is `no_damage_vector`.
    A file's steps are scaled by `spec`'s factor for its quality (none without a spec) and the
    strength's, rounded, never below 1.
    """
    if strength is Strength.off:
        return no_damage_vector()
    vector = np.zeros(QUANTIZATION_LENGTH, np.float32)
    jpeg, luma = info.jpeg, upright_luma_table(info)
    if luma is not None:
        vector[:64] = luma.ravel()
        if jpeg.chroma_table is not None:
            chroma = np.asarray(jpeg.chroma_table)
            vector[64:128] = (chroma.T if _swapped(info) else chroma).ravel()
            vector[128:] = jpeg.sampling[::-1] if _swapped(info) else jpeg.sampling
        else:
            vector[128:] = (1, 1)
        factor = TABLE_SCALE.get(strength, 1.0) * (spec.step_factor(jpeg.quality) if spec and jpeg.quality else 1.0)
        vector = scale_steps(vector, factor)
    elif strength in BLIND_QUALITY:
        quality = BLIND_QUALITY[strength]
        vector[:64] = ijg_table(quality).ravel()
        vector[64:128] = 0 if info.grayscale else ijg_table(quality, IJG_CHROMA).ravel()
        vector[128:] = (1, 1) if info.grayscale else (2, 2)
    return vector


Builder = Callable[[ImageInfo, Strength, ModelSpec], np.ndarray]

#: Input name -> function computing its vector from the image's metadata, the strength asked for
#: and the model's spec. A model declaring any other input is refused at start-up.
BUILDERS: dict[str, Builder] = {QUANTIZATION_KEY: quantization_vector}


def check_supported(spec: ModelSpec) -> None:
    """Raise ValueError when `spec` declares an input this server cannot compute."""
    unknown = sorted(set(spec.inputs) - set(BUILDERS))
    if unknown:
        known = ", ".join(sorted(BUILDERS)) or "none"
        raise ValueError(
            f"model {spec.name!r} declares the extra input(s) {', '.join(unknown)}, which this server "
            f"cannot compute (it knows: {known}); add a builder to enhancer.conditioning.BUILDERS"
        )


def model_inputs(spec: ModelSpec, image: ImageInfo, strength: Strength = Strength.auto) -> dict[str, np.ndarray]:
    """One float32 vector per extra input `spec` declares, for this image ({} for pixels-only models).

    A model without the quantisation input has no strength control but on and off (off meaning
    "not run", at scale 1): asking it for another strength, or an enlarging one for off, is a
    client error rather than a setting silently ignored.
    """
    check_supported(spec)
    if QUANTIZATION_KEY not in spec.inputs:
        if strength in TABLE_SCALE:
            raise InvalidParameterError(
                f"model {spec.name!r} is not told how the file was compressed, so it has no strength "
                f"{strength.value!r}; use strength=auto or strength=off"
            )
        if strength is Strength.off:
            raise InvalidParameterError(
                f"model {spec.name!r} enlarges {spec.scale}x and is not told how the file was compressed, "
                "so it cannot be asked not to restore (strength=off); use strength=auto"
            )
    vectors = {}
    for name, length in spec.inputs.items():
        vector = np.asarray(BUILDERS[name](image, strength, spec), dtype=np.float32)
        if vector.shape != (length,):
            raise ValueError(
                f"the builder of input {name!r} returned shape {vector.shape}; model {spec.name!r} "
                f"declares a vector of length {length}"
            )
        vectors[name] = vector
    return vectors
