"""Upscaling models for tests, exported by the project's own export code (the trained weights of
weights/upscale-x2 and weights/upscale-x4 may not exist yet, and tests must not depend on them).

The architecture is `build_upscaler` (the `dejpeg_q` restorer, told the file's tables and
projected onto them, then a head whose depth-to-space output corrects TF bicubic), made small
(fewer channels) so that export, warm-up and inference fit a busy CPU. An untrained upscaler is
exactly "bicubic of the input" whatever its `quantization` input says (its restorer's and its
head's last layers are zero), so a test could not tell one condition from another, nor see a seam
that a real model would make. So every weight gets a small seeded random change: the restorer
then really corrects the image, within the file's quantisation intervals (so the condition
matters: "no damage", every step 1, leaves it almost no room), and the head adds detail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Standard deviation of the random change added to every kernel (as the scale-1 seam test does).
PERTURBATION = 0.02


def export_test_upscaler(scale: int, out_dir: Path, seed: int = 0) -> Path:
    """A small perturbed upscaler of `scale`, exported to `out_dir` (its name is the model's)."""
    import keras

    from enhancer.training.export import export_saved_model
    from enhancer.training.network import build_dejpeg_q, build_upscaler

    keras.utils.set_random_seed(seed)
    restorer = build_dejpeg_q(half_channels=8, quarter_channels=16, quarter_blocks=1, condition_units=8, name="restorer")
    net = build_upscaler(scale, head_channels=8, head_blocks=1, restorer=restorer)
    rng = np.random.default_rng(seed)
    net.set_weights(
        [(w + rng.normal(0, PERTURBATION, w.shape) * (w.ndim > 1)).astype("float32") for w in net.get_weights()]
    )
    return export_saved_model(net, Path(out_dir), {"note": f"test upscaler x{scale}: small, perturbed, untrained"})
