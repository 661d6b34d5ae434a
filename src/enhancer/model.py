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


PRECISIONS = ("float32", "mixed_float16")


def _configure_runtime(intra_op_threads: int, inter_op_threads: int, memory_growth: bool = True) -> str:
    """Set thread counts and GPU memory growth (once per process) and name the device used."""
    gpus = tf.config.list_physical_devices("GPU")
    # TensorFlow fixes these at its first op and raises RuntimeError afterwards: a second model
    # in the same process (tests, the CLI after a server) keeps the first settings.
    for gpu in gpus if memory_growth else ():
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


def _set_precision(precision: str, gpus: list) -> str:
    """Switch TensorFlow's automatic mixed precision rewrite on or off; returns what will happen.

    A SavedModel's graph has float32 weights and ops baked in: casting the input to float16 would
    not type-check against them. What does work without re-exporting is Grappler's
    `auto_mixed_precision` pass, which rewrites the graph when a function is instantiated: the
    convolutions run in float16 on Tensor Cores, with casts at their edges, and the signature stays
    float32 in and out. It acts only on GPUs of compute capability 7.0+ (and CPUs with AMX-FP16).
    Halving the weights' memory too would need a separately exported float16 SavedModel.
    The switch is process-wide; it applies to functions first run after it is set.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    mixed = precision == "mixed_float16"
    tf.config.optimizer.set_experimental_options({"auto_mixed_precision": mixed})
    if not mixed:
        return "float32"
    capable = [
        gpu.name
        for gpu in gpus
        if tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability") or (0, 0)) >= (7, 0)
    ]
    if capable:
        return "mixed_float16 (float16 convolutions on Tensor Cores, float32 in/out)"
    log.warning(
        "precision=mixed_float16 asked for, but no GPU with compute capability 7.0+ is visible: "
        "TensorFlow's mixed precision rewrite does nothing here (except on CPUs with AMX-FP16), "
        "so the model effectively runs in float32"
    )
    return "float32 (mixed_float16 asked for; no Tensor Core GPU)"


class SavedModelRunner:
    """Runs the restoration SavedModel on numpy batches; safe to call from any single thread."""

    def __init__(
        self,
        model_dir: Path,
        *,
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        memory_growth: bool = True,
        precision: str = "float32",
        xla: bool = False,
    ):
        model_dir = Path(model_dir)
        if not (model_dir / "saved_model.pb").is_file():
            raise ModelLoadError(
                f"no SavedModel at {model_dir} (expected saved_model.pb there); set "
                "ENHANCER_MODEL_DIR or run from the repository root where weights/dejpeg lives"
            )
        self.model_dir = model_dir
        self.device = _configure_runtime(intra_op_threads, inter_op_threads, memory_growth)
        gpus = tf.config.list_physical_devices("GPU")
        #: "gpu" or "cpu": picks the tile/batch defaults (config.device_defaults)
        self.device_kind = "gpu" if gpus else "cpu"
        self.precision = _set_precision(precision, gpus)
        self.xla = xla
        if xla and precision == "mixed_float16":
            log.warning(
                "XLA compiles the graph itself; whether the mixed precision rewrite still applies "
                "under XLA is not verified: measure, or use one of the two"
            )
        #: batch sizes XLA was warmed up for: smaller batches are padded up to one of them
        self._xla_batch_sizes: tuple[int, ...] = ()
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
        self._run = self._serve_plain
        if xla:
            # XLA compiles once per concrete input shape (batch, height, width); reduce_retracing
            # keeps one traced graph for all of them.
            serve = self._serve
            self._run = tf.function(
                lambda images: serve(**{INPUT_KEY: images})[OUTPUT_KEY],
                jit_compile=True,
                reduce_retracing=True,
            )
        log.info(
            "loaded model %s in %.2fs on %s", model_dir, time.perf_counter() - started, self.device
        )

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Enhance a float32 [N, H, W, 3] batch in [0, 1]; returns the same shape, same order."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected a [N, H, W, 3] batch, got shape {batch.shape}")
        n = batch.shape[0]
        padded = next((size for size in self._xla_batch_sizes if size >= n), n)
        if padded > n:  # a batch size XLA has compiled, instead of a compile now
            batch = np.concatenate([batch, np.repeat(batch[-1:], padded - n, axis=0)])
        return self._run(tf.constant(batch)).numpy()[:n]

    def _serve_plain(self, images: tf.Tensor) -> tf.Tensor:
        return self._serve(**{INPUT_KEY: images})[OUTPUT_KEY]

    def warm_up(self, shapes: Iterable[tuple[int, int]], max_batch_size: int) -> float:
        """Run each tile shape at batch sizes 1 and `max_batch_size`; returns seconds spent.

        The full batch proves the largest batch fits in memory before any client depends on it;
        batch 1 is the common light-load case.
        """
        started = time.perf_counter()
        sizes = sorted({1, max_batch_size})
        self._xla_batch_sizes = ()  # warm up (compile) at exactly these sizes, unpadded
        for height, width in shapes:
            for n in sizes:
                self.forward(np.full((n, height, width, 3), 0.5, np.float32))
        if self.xla:
            self._xla_batch_sizes = tuple(sizes)
        elapsed = time.perf_counter() - started
        log.info("warm-up done in %.2fs", elapsed)
        return elapsed


def load_model(
    model_dir: Path,
    *,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    memory_growth: bool = True,
    precision: str = "float32",
    xla: bool = False,
) -> SavedModelRunner:
    """Load the SavedModel at `model_dir` (see SavedModelRunner)."""
    return SavedModelRunner(
        model_dir,
        intra_op_threads=intra_op_threads,
        inter_op_threads=inter_op_threads,
        memory_growth=memory_growth,
        precision=precision,
        xla=xla,
    )


def load_model_for(settings) -> SavedModelRunner:
    """Load the model a `Settings` names, with its device options: the server and the CLI share it."""
    return load_model(
        settings.model_dir,
        intra_op_threads=settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
        memory_growth=settings.gpu_memory_growth,
        precision=settings.precision,
        xla=settings.xla,
    )
