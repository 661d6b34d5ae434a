"""The SavedModel runner: the only module that imports TensorFlow when serving.

It loads `serving_default` (`images` float32 [N, H, W, 3] in [0, 1] -> `enhanced`, same shape),
chooses the device, and exposes a plain numpy `forward` so the batcher and the CLI never see
TensorFlow. `warm_up` runs every tile shape once before the service reports ready, so the first
real request neither pays for graph/kernel set-up nor discovers that a batch does not fit in memory.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TF's C++ start-up chatter (no-GPU notes)

import tensorflow as tf  # noqa: E402

log = logging.getLogger(__name__)

SIGNATURE_KEY = "serving_default"
INPUT_KEY = "images"
OUTPUT_KEY = "enhanced"


class ModelLoadError(RuntimeError):
    """The model directory is missing or does not hold the expected serving signature."""


def _configure_runtime(intra_op_threads: int, inter_op_threads: int) -> str:
    """Set thread counts and GPU memory growth (once per process) and name the device used."""
    gpus = tf.config.list_physical_devices("GPU")
    # TensorFlow fixes these at its first op and raises RuntimeError afterwards: a second model
    # in the same process (tests, the CLI after a server) keeps the first settings.
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            log.debug("GPU %s already initialised; memory growth unchanged", gpu.name)
    for setter, value in (
        (tf.config.threading.set_intra_op_parallelism_threads, intra_op_threads),
        (tf.config.threading.set_inter_op_parallelism_threads, inter_op_threads),
    ):
        if value:
            try:
                setter(value)
            except RuntimeError:
                log.warning("TensorFlow already running; %s(%d) ignored", setter.__name__, value)
    if gpus:
        return f"GPU ({', '.join(gpu.name for gpu in gpus)})"
    return (
        f"CPU (intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'auto'}, "
        f"inter-op threads {tf.config.threading.get_inter_op_parallelism_threads() or 'auto'})"
    )


class SavedModelRunner:
    """Runs the restoration SavedModel on numpy batches; safe to call from any single thread."""

    def __init__(self, model_dir: Path, *, intra_op_threads: int = 0, inter_op_threads: int = 0):
        model_dir = Path(model_dir)
        if not (model_dir / "saved_model.pb").is_file():
            raise ModelLoadError(
                f"no SavedModel at {model_dir} (expected saved_model.pb there); set "
                "ENHANCER_MODEL_DIR or run from the repository root where weights/dejpeg lives"
            )
        self.model_dir = model_dir
        self.device = _configure_runtime(intra_op_threads, inter_op_threads)
        started = time.perf_counter()
        self._loaded = tf.saved_model.load(str(model_dir))
        try:
            self._serve = self._loaded.signatures[SIGNATURE_KEY]
        except KeyError:
            raise ModelLoadError(
                f"{model_dir} has no '{SIGNATURE_KEY}' signature; export it with "
                "enhancer.training.export.export_saved_model"
            ) from None
        outputs = self._serve.structured_outputs
        if OUTPUT_KEY not in outputs:
            raise ModelLoadError(f"{model_dir} signature lacks the '{OUTPUT_KEY}' output")
        log.info(
            "loaded model %s in %.2fs on %s", model_dir, time.perf_counter() - started, self.device
        )

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Enhance a float32 [N, H, W, 3] batch in [0, 1]; returns the same shape, same order."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected a [N, H, W, 3] batch, got shape {batch.shape}")
        result = self._serve(**{INPUT_KEY: tf.constant(batch)})[OUTPUT_KEY]
        return result.numpy()

    def warm_up(self, shapes: Iterable[tuple[int, int]], max_batch_size: int) -> float:
        """Run each tile shape at batch sizes 1 and `max_batch_size`; returns seconds spent.

        The full batch proves the largest batch fits in memory before any client depends on it;
        batch 1 is the common light-load case.
        """
        started = time.perf_counter()
        for height, width in shapes:
            for n in sorted({1, max_batch_size}):
                self.forward(np.full((n, height, width, 3), 0.5, np.float32))
        elapsed = time.perf_counter() - started
        log.info("warm-up done in %.2fs", elapsed)
        return elapsed


def load_model(model_dir: Path, *, intra_op_threads: int = 0, inter_op_threads: int = 0) -> SavedModelRunner:
    """Load the SavedModel at `model_dir` (see SavedModelRunner)."""
    return SavedModelRunner(
        model_dir, intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads
    )
