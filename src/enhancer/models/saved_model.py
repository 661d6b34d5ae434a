"""The SavedModel runner: the only module that imports TensorFlow when serving.

`configure_device` sets TensorFlow's threads, GPU memory growth and precision once per process
and says which device is used (the CPU precision was resolved before this module imported
TensorFlow: enhancer.precision); `SavedModelRunner` loads one model folder onto that device and
exposes a plain numpy `forward`, so the batcher, the pipeline and the CLI never see TensorFlow.
`warm_up` runs the given tile shapes once before the service reports ready, so the first real
request neither pays for graph/kernel set-up nor discovers that a batch does not fit in memory.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TF's C++ start-up chatter (no-GPU notes)

import tensorflow as tf  # noqa: E402

from enhancer.models.contract import (  # noqa: E402
    INPUT_KEY,
    OUTPUT_KEY,
    SIGNATURE_KEY,
    ModelLoadError,
    ModelSpec,
    read_spec,
)
from enhancer.precision import (  # noqa: E402
    REWRITE_ALLOWLIST_REMOVE_VARIABLE,
    REWRITE_KEEPS_FLOAT32,
    REWRITE_OPTION,
    Precision,
    prepare,
)

if TYPE_CHECKING:
    from enhancer.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Device:
    """The device every model of this process runs on, as TensorFlow was configured for it."""

    kind: str  #: "cpu" or "gpu"
    description: str  #: in words, for logs and /readyz
    precision: str  #: what the precision setting really does here
    #: a CPU bfloat16 plan by graph rewrite: the runner switches the rewrite per model (see forward)
    rewrite: Precision | None = None


def configure_device(settings: Settings, plan: Precision | None = None) -> Device:
    """Set thread counts, GPU memory growth and precision (process-wide), and name the device.

    `plan` is the CPU precision `enhancer.precision.prepare` resolved before TensorFlow loaded;
    without one it is resolved now, too late for bfloat16 (see `prepare`).
    TensorFlow fixes threads and memory growth at its first op and refuses changes afterwards: a
    second call in the same process (tests, the CLI after a server) keeps the first settings.
    """
    plan = plan or prepare(settings.precision)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus if settings.gpu_memory_growth else ():
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            log.debug("GPU %s already initialised; memory growth unchanged", gpu.name)
    for setter, value in (
        (tf.config.threading.set_intra_op_parallelism_threads, settings.intra_op_threads),
        (tf.config.threading.set_inter_op_parallelism_threads, settings.inter_op_threads),
    ):
        if value:
            try:
                setter(value)
            except RuntimeError:
                log.warning("TensorFlow already running; %s(%d) ignored", setter.__name__, value)
    if gpus:
        description = f"GPU ({', '.join(gpu.name for gpu in gpus)})"
    else:
        description = (
            f"CPU (intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'auto'}, "
            f"inter-op threads {tf.config.threading.get_inter_op_parallelism_threads() or 'auto'})"
        )
    rewrite = plan if plan.graph_rewrite and not gpus else None
    if rewrite is not None:  # prepare() sets it too; a plan made elsewhere must not rewrite the projection
        os.environ.setdefault(REWRITE_ALLOWLIST_REMOVE_VARIABLE, REWRITE_KEEPS_FLOAT32)
    return Device("gpu" if gpus else "cpu", description, _precision_on_device(plan, gpus), rewrite)


def _precision_on_device(plan: Precision, gpus: list) -> str:
    """What the models' arithmetic is, given the CPU plan and the GPUs TensorFlow sees.

    On a GPU, `auto` means the mixed_float16 path; bfloat16 is CPU math (oneDNN) and changes
    nothing there. On a CPU the plan stands (its variable was set before TensorFlow loaded).
    """
    if gpus and plan.setting == "auto":
        mixed = bool(_tensor_core_gpus(gpus))
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision": mixed})
        if mixed:
            return "mixed_float16 (auto: Tensor Core GPU; float16 convolutions, float32 in/out)"
        return "float32 (auto: the GPU has no Tensor Cores)"
    if plan.name == "bfloat16":
        _set_precision("float32", gpus)
        if gpus:
            log.warning("precision bfloat16 is CPU math (oneDNN); the models run on the GPU, in float32")
            return "float32 (bfloat16 asked for; it is CPU math and the models run on the GPU)"
        return plan.describe()
    chosen = _set_precision(plan.name, gpus)
    return plan.describe() if chosen == plan.name else chosen


def _tensor_core_gpus(gpus: list) -> list[str]:
    return [
        gpu.name
        for gpu in gpus
        if tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability") or (0, 0)) >= (7, 0)
    ]


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
    if precision not in ("float32", "mixed_float16"):
        raise ValueError(f"precision must be float32 or mixed_float16 here, got {precision!r}")
    mixed = precision == "mixed_float16"
    tf.config.optimizer.set_experimental_options({"auto_mixed_precision": mixed})
    if not mixed:
        return "float32"
    if _tensor_core_gpus(gpus):
        return "mixed_float16 (float16 convolutions on Tensor Cores, float32 in/out)"
    log.warning(
        "precision=mixed_float16 asked for, but no GPU with compute capability 7.0+ is visible: "
        "TensorFlow's mixed precision rewrite does nothing here (except on CPUs with AMX-FP16), "
        "so the model effectively runs in float32"
    )
    return "float32 (mixed_float16 asked for; no Tensor Core GPU)"


class SavedModelRunner:
    """One model folder loaded onto `device`; implements the contract's `Model`.

    Safe to call from any single thread (the batcher's model thread, the CLI).
    """

    def __init__(self, model_dir: Path, *, device: Device, xla: bool = False):
        model_dir = Path(model_dir)
        if not (model_dir / "saved_model.pb").is_file():
            raise ModelLoadError(
                f"no SavedModel at {model_dir} (expected saved_model.pb there); set "
                "ENHANCER_MODEL_DIR (or ENHANCER_MODELS_DIR) or run from the repository root, whose "
                "weights/ holds the shipped models"
            )
        self.model_dir = model_dir
        self.spec: ModelSpec = read_spec(model_dir)
        self.device = device.description
        self.device_kind = device.kind
        self.precision = device.precision
        #: with a graph-rewrite plan: whether this model's graph is rewritten (None: no such plan)
        self._rewrite: bool | None = None
        if device.rewrite is not None:
            self._rewrite = model_dir.name not in device.rewrite.float32_models
            self.precision = device.rewrite.for_model(model_dir.name)
        self.xla = xla
        if xla and "mixed_float16" in device.precision:  # asked for, whatever the device made of it
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
        if OUTPUT_KEY not in self._serve.structured_outputs:
            raise ModelLoadError(f"{model_dir} signature lacks the '{OUTPUT_KEY}' output")
        taken = set(self._serve.structured_input_signature[1])
        declared = {INPUT_KEY, *self.spec.inputs}
        if taken != declared:
            raise ModelLoadError(
                f"{model_dir}: the signature takes inputs {sorted(taken)} but metadata.json declares "
                f"{sorted(declared)} ('{INPUT_KEY}' plus its 'inputs'); re-export the model"
            )
        self._run = self._serve_plain
        if xla:
            # XLA compiles once per concrete input shape (batch, height, width); reduce_retracing
            # keeps one traced graph for all of them.
            serve = self._serve
            self._run = tf.function(
                lambda images, **extra: serve(**{INPUT_KEY: images}, **extra)[OUTPUT_KEY],
                jit_compile=True,
                reduce_retracing=True,
            )
        log.info("loaded model %s from %s in %.2fs on %s", self.spec.name, model_dir, time.perf_counter() - started, self.device)

    def forward(self, batch: np.ndarray, inputs: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Enhance a float32 [N, H, W, 3] batch in [0, 1] (plus one [N, length] block per extra
        input the spec declares); returns [N, H * scale, W * scale, 3], same order."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected a [N, H, W, 3] batch, got shape {batch.shape}")
        n = batch.shape[0]
        extra = self._extra_inputs(inputs or {}, n)
        padded = next((size for size in self._xla_batch_sizes if size >= n), n)
        if padded > n:  # a batch size XLA has compiled, instead of a compile now
            batch = np.concatenate([batch, np.repeat(batch[-1:], padded - n, axis=0)])
            extra = {k: np.concatenate([v, np.repeat(v[-1:], padded - n, axis=0)]) for k, v in extra.items()}
        tensors = {k: tf.constant(v) for k, v in extra.items()}
        if self._rewrite is not None:
            # Grappler rewrites a graph when it is first run at a shape, under the switch as it is
            # then, and the switch is process-wide: set it to this model's choice before each call.
            tf.config.optimizer.set_experimental_options({REWRITE_OPTION: self._rewrite})
        return self._run(tf.constant(batch), **tensors).numpy()[:n]

    def _extra_inputs(self, inputs: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        if set(inputs) != set(self.spec.inputs):
            raise ValueError(
                f"model {self.spec.name!r} takes the extra inputs {sorted(self.spec.inputs)}, got {sorted(inputs)}"
            )
        extra = {}
        for name, length in self.spec.inputs.items():
            rows = np.ascontiguousarray(inputs[name], dtype=np.float32)
            if rows.shape != (n, length):
                raise ValueError(f"extra input {name!r} must be shaped [{n}, {length}], got {rows.shape}")
            extra[name] = rows
        return extra

    def _serve_plain(self, images: tf.Tensor, **extra: tf.Tensor) -> tf.Tensor:
        return self._serve(**{INPUT_KEY: images}, **extra)[OUTPUT_KEY]

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
                extra = {name: np.zeros((n, length), np.float32) for name, length in self.spec.inputs.items()}
                self.forward(np.full((n, height, width, 3), 0.5, np.float32), extra)
        if self.xla:
            self._xla_batch_sizes = tuple(sizes)
        elapsed = time.perf_counter() - started
        log.info("model %s warmed up in %.2fs", self.spec.name, elapsed)
        return elapsed

