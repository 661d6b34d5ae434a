"""Extra model inputs, computed per image: the one place that knows how each one is made.

A model's spec may declare inputs beyond the pixels (name -> vector length; see
enhancer.models.contract). For every request the pipeline asks `model_inputs` for one float32
vector per declared input, computed from the decoded image (e.g. its JPEG file's quantisation
tables); the batcher carries the vectors with the request's tiles and stacks them per batch.
Adding an input is adding its builder to `BUILDERS`: nothing else in the server changes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from enhancer.imaging import ImageInfo
from enhancer.models.contract import ModelSpec

Builder = Callable[[ImageInfo], np.ndarray]

#: Input name -> function computing its vector from the decoded image. Empty while the served
#: models take pixels only; a model declaring any other input is refused at start-up.
BUILDERS: dict[str, Builder] = {}


def check_supported(spec: ModelSpec) -> None:
    """Raise ValueError when `spec` declares an input this server cannot compute."""
    unknown = sorted(set(spec.inputs) - set(BUILDERS))
    if unknown:
        known = ", ".join(sorted(BUILDERS)) or "none"
        raise ValueError(
            f"model {spec.name!r} declares the extra input(s) {', '.join(unknown)}, which this server "
            f"cannot compute (it knows: {known}); add a builder to enhancer.conditioning.BUILDERS"
        )


def model_inputs(spec: ModelSpec, image: ImageInfo) -> dict[str, np.ndarray]:
    """One float32 vector per extra input `spec` declares, for this image ({} for pixels-only models)."""
    check_supported(spec)
    vectors = {}
    for name, length in spec.inputs.items():
        vector = np.asarray(BUILDERS[name](image), dtype=np.float32)
        if vector.shape != (length,):
            raise ValueError(
                f"the builder of input {name!r} returned shape {vector.shape}; model {spec.name!r} "
                f"declares a vector of length {length}"
            )
        vectors[name] = vector
    return vectors
