"""What a running server owns: its models, the batcher, the service, and one serving state.

Start-up (`Runtime.start`) loads the models (unless given) in a worker thread - a missing or
broken model stops the server at once with a clear error - and then, in this order: resolves the
device once and with it the tile and batch settings left unset (`Settings.for_device`); checks the
tile settings against every model's spec; builds the batcher and the service from the resolved
settings. Warm-up runs in the background, so `/healthz` answers immediately and `/readyz` turns
200 only when every model has run its warm-up tile shapes once (`warm_up_shapes`).

The serving state is one `ServingState`, changed only by `Lifecycle`, and read by `/healthz`,
`/readyz`, the `enhancer_ready` metric and the logs:

* starting -> warming -> ready: models loaded, then warmed up.
* ready <-> degraded: the last model batch failed / succeeded. Batches failing is not a reason to
  restart (the next one may succeed), so /healthz stays 200 ("degraded"); but once
  `FAILED_BATCHES_UNREADY` fail in a row (e.g. the device is out of memory) the models cannot run
  and /readyz turns 503, so a load balancer sends work elsewhere. Uploads are still accepted
  meanwhile, and a one-tile probe batch runs every `probe_interval_s`; the first successful batch,
  probe or real, makes the replica ready again.
* draining: shutdown (`drain`, called on SIGTERM by `enhancer serve`) turns /readyz to 503 and
  refuses new uploads with 503 at once, lets the uploads in flight finish, then stops the batcher,
  all within one `shutdown_timeout_s`.
* failed: loading or warming up failed; only a restart helps (/healthz 503).
"""

from __future__ import annotations

import asyncio
import logging
import time
from enum import Enum

import numpy as np

from enhancer import OPENCV_LIMITS, limits, tiling
from enhancer.batching import BatchObserver, BatchObservers, MicroBatcher
from enhancer.config import Settings
from enhancer.errors import EnhancerError, NotReadyError, ShuttingDownError
from enhancer.metrics import Metrics
from enhancer.models.contract import ModelSpec
from enhancer.models.registry import ModelRegistry
from enhancer.pixel_budget import PixelBudget, default_budget, memory_limit_bytes
from enhancer.service import EnhanceService

log = logging.getLogger(__name__)

#: Model batches failing in a row after which /readyz says the models cannot run.
FAILED_BATCHES_UNREADY = 3
#: While unready because of failed batches: seconds between one-tile probe batches.
PROBE_INTERVAL_S = 5.0


def warm_up_shapes(settings: Settings, spec: ModelSpec) -> list[tuple[int, int]]:
    """The tile shapes to run before serving `spec`'s model: every bucket where tiles come in
    buckets (XLA compiles per shape, and batches share the bucket shapes), else only the largest
    tile. Exact tile shapes are too many to warm, and need not be: TensorFlow pays its one-time
    start on the first call, and a new shape after it costs about what a repeated one does
    (measured, benchmarks/RESULTS.md); the largest tile (a solo tile where those are on) also
    proves the full batch fits."""
    tile = settings.tiling_for(spec).tile_size
    if settings.uses_tile_buckets:
        return tiling.bucket_shapes(tile, spec.size_multiple)
    largest = settings.tiling_for(spec, alone=True).tile_size
    return [(largest, largest)]


class ServingState(str, Enum):
    """Where the server is in its life (see the module docstring for the transitions)."""

    STARTING = "starting"  #: loading the models
    WARMING = "warming"  #: models loaded; running their tile shapes once (warm_up_shapes)
    READY = "ready"  #: serving
    DEGRADED = "degraded"  #: serving, but the last model batch failed
    DRAINING = "draining"  #: shutting down: no new uploads; those in flight finish
    FAILED = "failed"  #: loading or warm-up failed: only a restart helps


class Lifecycle(BatchObserver):
    """The serving state and every transition of it, in one place.

    It hears each batch's outcome from the batcher (it is one of the batcher's observers).
    """

    def __init__(self) -> None:
        self.state = ServingState.STARTING
        self.failure: str | None = None  #: why the state is FAILED
        self.failed_in_a_row = 0  #: model batches failed since the last successful one
        self.last_batch_error: str | None = None  #: `Type: message` of the latest failed batch
        self.last_failed_model: str | None = None  #: the model whose batch failed latest

    def _move(self, new: ServingState, why: str) -> None:
        if new is self.state:
            return
        level = logging.WARNING if new in (ServingState.DEGRADED, ServingState.FAILED) else logging.INFO
        log.log(level, "state %s -> %s: %s", self.state.value, new.value, why)
        self.state = new

    # --- transitions ------------------------------------------------------------------------
    def loaded(self, why: str) -> None:
        if self.state is ServingState.STARTING:
            self._move(ServingState.WARMING, why)

    def warmed(self, why: str) -> None:
        if self.state is ServingState.WARMING:
            self._move(ServingState.READY, why)

    def fail(self, reason: str) -> None:
        if self.state is not ServingState.DRAINING:
            self.failure = reason
            self._move(ServingState.FAILED, reason)

    def drain(self, why: str) -> None:
        if self.state is not ServingState.FAILED:
            self._move(ServingState.DRAINING, why)

    def on_batch(self, model: str, size: int, infer_s: float) -> None:
        recovered = self.failed_in_a_row
        self.failed_in_a_row = 0
        if self.state is ServingState.DEGRADED:
            self._move(ServingState.READY, f"a batch of model {model} succeeded after {recovered} failed")

    def on_batch_failed(self, model: str, size: int, error: BaseException) -> None:
        self.failed_in_a_row += 1
        self.last_batch_error = f"{type(error).__name__}: {error}"
        self.last_failed_model = model
        if self.state is ServingState.READY:
            self._move(ServingState.DEGRADED, f"a batch of model {model} failed ({self.last_batch_error})")
        if self.failed_in_a_row == FAILED_BATCHES_UNREADY and self.state is ServingState.DEGRADED:
            log.warning("%d model batches failed in a row: unready until one succeeds", self.failed_in_a_row)

    # --- readings ---------------------------------------------------------------------------
    @property
    def models_failing(self) -> bool:
        """FAILED_BATCHES_UNREADY or more batches failed in a row: the models cannot run now."""
        return self.state is ServingState.DEGRADED and self.failed_in_a_row >= FAILED_BATCHES_UNREADY

    @property
    def ready(self) -> bool:
        """What /readyz and enhancer_ready say: serving, and the models can run."""
        return self.state is ServingState.READY or (self.state is ServingState.DEGRADED and not self.models_failing)


class Runtime:
    """Lifecycle of one app's models, batcher and service."""

    def __init__(self, settings: Settings, metrics: Metrics, models: ModelRegistry | None = None):
        self.settings = settings  #: as configured; after start, resolved for the device
        self.metrics = metrics
        self.models = models
        self.lifecycle = Lifecycle()
        self.batcher: MicroBatcher | None = None
        self.service: EnhanceService | None = None
        self.warmed: list[str] = []  #: names of the models warmed up so far
        self._warm_task: asyncio.Task | None = None
        self._probe_task: asyncio.Task | None = None
        self._batcher_started = False
        self.probe_interval_s = PROBE_INTERVAL_S
        # shutdown
        self.uploads_in_flight = 0
        self._idle: asyncio.Event | None = None
        self._shutdown_deadline: float | None = None  # time.monotonic()
        metrics.ready.set_function(lambda: 1.0 if self.lifecycle.ready else 0.0)
        self.pixel_budget, self._budget_origin = self._make_pixel_budget(settings)
        metrics.pixels_in_flight.set_function(lambda: self.pixel_budget.in_flight)
        metrics.max_pixels_in_flight.set(self.pixel_budget.limit)

    @staticmethod
    def _make_pixel_budget(settings: Settings) -> tuple[PixelBudget, str]:
        """The budget on pixels in flight, and where its size came from (for the start-up log)."""
        if settings.max_pixels_in_flight is not None:
            return PixelBudget(settings.max_pixels_in_flight), "set"
        memory = memory_limit_bytes()
        return PixelBudget(default_budget(memory)), f"derived from {memory / 2**30:.1f} GiB of memory"

    @property
    def state(self) -> ServingState:
        return self.lifecycle.state

    async def start(self) -> None:
        """Load the models (unless given), resolve the settings, build the batcher and the
        service, then warm up in the background. Raises (and the state is FAILED) when the models
        cannot be loaded or cannot be served with these settings."""
        try:
            if self.models is None:
                self.models = await asyncio.to_thread(ModelRegistry.load, self.settings)
            models = self.models
            # tile and batch sizes that were not set follow the device the models run on
            self.settings = s = self.settings.for_device(models.device_kind)
            models.check_tiling(s)
        except Exception as exc:
            self.lifecycle.fail(f"start-up failed: {exc}")
            raise
        log.info("%s", s.describe_inference(models.device_kind, models.device, models.precision))
        log.info(
            "serving %s; default model %s",
            ", ".join(
                f"{m.spec.name} (scale {m.spec.scale}, reach {m.spec.reach} px, size multiple {m.spec.size_multiple}, "
                "tile {} overlap {})".format(*s.tiling_for(m.spec))
                for m in models.values()
            ),
            models.default,
        )
        warning = limits.mismatch(s.max_pixels, s.max_image_side, OPENCV_LIMITS)
        if warning:
            log.warning("%s", warning)
        budget = self.pixel_budget.limit
        log.info("pixels in flight: at most %.1f MP (%s)", budget / 1e6, self._budget_origin)
        if budget < s.max_pixels:
            log.info(
                "images over %.1f MP (the pixel budget) but within ENHANCER_MAX_PIXELS are served only "
                "when nothing else is in flight",
                budget / 1e6,
            )
        self.batcher = MicroBatcher.from_settings(models, s, observer=BatchObservers(self.metrics, self.lifecycle))
        self.service = EnhanceService.from_settings(s, self.batcher, observer=self.metrics)
        self.lifecycle.loaded(f"{len(models)} model(s) loaded; warming up")
        self._warm_task = asyncio.create_task(self._warm_up_and_serve(), name="enhancer-warm-up")

    async def _warm_up_and_serve(self) -> None:
        assert self.models is not None and self.batcher is not None
        try:
            for name, model in self.models.items():
                shapes = warm_up_shapes(self.settings, model.spec)
                log.info("warming up model %s: %d tile shapes on %s", name, len(shapes), model.device)
                await asyncio.to_thread(model.warm_up, shapes, self.settings.max_batch_size)
                self.warmed.append(name)
            await self.batcher.start()
            self._batcher_started = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("model warm-up failed; the service will stay unready")
            self.lifecycle.fail(f"model warm-up failed: {exc}")
            return
        self.lifecycle.warmed(f"serving {', '.join(self.warmed)} on {self.models.device}")
        self._probe_task = asyncio.create_task(self._probe_while_failing(), name="enhancer-model-probe")

    async def _probe_while_failing(self) -> None:
        """While the models are failing, run a one-tile batch now and then to notice their recovery."""
        loop = asyncio.get_running_loop()
        last_probe = loop.time()
        while True:
            await asyncio.sleep(min(self.probe_interval_s, 0.25))  # a cheap check, not a batch
            if not self.lifecycle.models_failing:
                continue
            if loop.time() - last_probe < self.probe_interval_s:
                continue
            last_probe = loop.time()
            model = self.models[self.lifecycle.last_failed_model or self.models.default]
            tile = self.settings.tiling_for(model.spec).tile_size
            shape = min(tiling.bucket_shapes(tile, model.spec.size_multiple))
            probe = np.full((1, *shape, 3), 0.5, np.float32)
            inputs = {name: np.zeros(length, np.float32) for name, length in model.spec.inputs.items()}
            try:
                await self.batcher.submit(model.spec.name, probe, inputs)
                log.info("model probe batch succeeded: ready again")
            except Exception as exc:
                log.warning("model probe batch failed (%s); staying unready", exc)

    async def wait_ready(self) -> None:
        """Wait for warm-up to finish (for tests and the CLI); raises if it failed."""
        if self._warm_task is not None:
            await asyncio.shield(self._warm_task)
        if not self.lifecycle.ready:
            raise RuntimeError(self.lifecycle.failure or f"the runtime is {self.state.value}, not ready")

    def readiness_error(self) -> EnhancerError | None:
        """Why /readyz is 503 (starting, warming up, models failing, shutting down, failed), or None."""
        if self.state is ServingState.DRAINING:
            return ShuttingDownError(
                "the server is shutting down and takes no new work; retry on another replica",
                retry_after_s=max(1.0, self.shutdown_seconds_left()),
            )
        try:
            self.require_service()
        except NotReadyError as exc:
            return exc
        if self.lifecycle.models_failing:
            return NotReadyError(
                f"the model cannot run: its last {self.lifecycle.failed_in_a_row} batches failed "
                f"({self.lifecycle.last_batch_error}); a probe batch retries every "
                f"{self.probe_interval_s:g} s, see the server log",
                retry_after_s=self.probe_interval_s,
            )
        return None

    # --- uploads in flight and shutdown -----------------------------------------------------

    def refuse_upload(self) -> EnhancerError | None:
        """The answer for a new upload while shutting down (None: take it)."""
        if self.state is not ServingState.DRAINING:
            return None
        return ShuttingDownError(
            "the server is shutting down and takes no new uploads; retry in a moment",
            retry_after_s=max(1.0, self.shutdown_seconds_left()),
        )

    def upload_started(self) -> None:
        self.uploads_in_flight += 1
        self.metrics.uploads_in_flight.set(self.uploads_in_flight)

    def upload_finished(self) -> None:
        self.uploads_in_flight -= 1
        self.metrics.uploads_in_flight.set(self.uploads_in_flight)
        if self.uploads_in_flight == 0 and self._idle is not None:
            self._idle.set()

    def shutdown_seconds_left(self) -> float:
        if self._shutdown_deadline is None:
            return self.settings.shutdown_timeout_s
        return max(0.0, self._shutdown_deadline - time.monotonic())

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Begin shutting down: unready, refuse new uploads, wait for those in flight (at most
        `timeout_s`, default shutdown_timeout_s, which also bounds the `stop` that follows).
        True if every upload in flight finished."""
        timeout_s = self.settings.shutdown_timeout_s if timeout_s is None else timeout_s
        if self._shutdown_deadline is None:
            self._shutdown_deadline = time.monotonic() + timeout_s
            self.lifecycle.drain(
                f"refusing new uploads, {self.uploads_in_flight} in flight may finish within {timeout_s:.0f} s"
            )
        self._idle = asyncio.Event()
        if self.uploads_in_flight == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), self.shutdown_seconds_left())
            return True
        except TimeoutError:
            log.warning("%d upload(s) still in flight at the shutdown deadline", self.uploads_in_flight)
            return False

    def require_service(self) -> EnhanceService:
        """The service, or a 503 that says why it cannot take requests yet."""
        if self.state is ServingState.FAILED:
            raise NotReadyError(
                f"the service cannot process images ({self.lifecycle.failure}); see the server log",
                retry_after_s=30,
            )
        if not self._batcher_started or self.service is None:  # starting, warming (or draining before that)
            raise NotReadyError(
                "the model is still loading and warming up; retry in a few seconds",
                retry_after_s=2,
            )
        return self.service

    async def stop(self) -> None:
        """Stop taking work, let queued tiles finish, then drop the rest.

        Queued work gets what is left of the shutdown deadline `drain` set (shutdown_timeout_s
        from SIGTERM), or shutdown_timeout_s if `drain` was not called: never two timeouts.
        """
        if self._shutdown_deadline is None:
            self._shutdown_deadline = time.monotonic() + self.settings.shutdown_timeout_s
        self.lifecycle.drain("stopping")
        for task in (self._warm_task, self._probe_task):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        if self.batcher is None or not self._batcher_started:
            return
        # at least a moment: an empty queue stops at once, but wait_for(…, 0) never lets it
        left = max(self.shutdown_seconds_left(), 0.05)
        try:
            await asyncio.wait_for(self.batcher.stop(drain=True), timeout=left)
        except TimeoutError:
            log.warning("queued work did not finish by the shutdown deadline; dropping it")
            await self.batcher.stop(drain=False)
