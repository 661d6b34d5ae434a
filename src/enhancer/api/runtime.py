"""What a running app owns: the model, the batcher, the pipeline, and whether it is ready.

Start-up loads the model synchronously (a missing model stops the server at once with a clear
error), then warms up in the background so `/healthz` answers immediately and `/readyz` turns 200
only when every tile shape has been run once.

Readiness afterwards:

* `FAILED_BATCHES_UNREADY` model batches failing in a row (e.g. the device is out of memory) turn
  `/readyz` to 503: the model cannot run, so a load balancer should send work elsewhere. Uploads
  are still accepted (they fail with 500 or succeed), and while unready a one-tile probe batch runs
  every `probe_interval_s`; the first successful batch, probe or real, makes the replica ready again.
* Shutdown (`drain`, called on SIGTERM by `enhancer serve`) turns `/readyz` to 503 and refuses new
  uploads with 503 at once, lets the uploads in flight finish, then stops the batcher - all within
  one `shutdown_timeout_s`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

import numpy as np

from enhancer import OPENCV_LIMITS, limits, tiling
from enhancer.batching import MicroBatcher
from enhancer.config import Settings
from enhancer.errors import EnhancerError, NotReadyError, ShuttingDownError
from enhancer.metrics import Metrics
from enhancer.service import EnhanceService

log = logging.getLogger(__name__)

#: Model batches failing in a row after which /readyz says the model cannot run.
FAILED_BATCHES_UNREADY = 3
#: While unready because of failed batches: seconds between one-tile probe batches.
PROBE_INTERVAL_S = 5.0


class Model(Protocol):
    """What the service needs from a model (see enhancer.model.SavedModelRunner)."""

    device: str

    def forward(self, batch: np.ndarray) -> np.ndarray: ...

    def warm_up(self, shapes, max_batch_size: int) -> float: ...


class Runtime:
    """Lifecycle of one app's model, batcher and pipeline."""

    def __init__(self, settings: Settings, metrics: Metrics, model: Model | None = None):
        self.settings = settings
        self.metrics = metrics
        self.model = model
        self.batcher: MicroBatcher | None = None
        self.service: EnhanceService | None = None
        self.ready = False
        self.failure: str | None = None
        self._warm_task: asyncio.Task | None = None
        self._probe_task: asyncio.Task | None = None
        self._batcher_started = False
        self.probe_interval_s = PROBE_INTERVAL_S
        # shutdown
        self.draining = False
        self.uploads_in_flight = 0
        self._idle: asyncio.Event | None = None
        self._shutdown_deadline: float | None = None  # time.monotonic()

    async def start(self) -> None:
        """Load the model (unless one was given), then warm up in the background."""
        s = self.settings
        if self.model is None:
            from enhancer.model import load_model_for  # TensorFlow is imported only here

            self.model = await asyncio.to_thread(load_model_for, s)
        # tile and batch sizes that were not set follow the device TensorFlow chose (GPU or CPU)
        self.settings = s = s.for_device(getattr(self.model, "device_kind", "cpu"))
        log.info("%s", s.describe_inference(self.model.device, getattr(self.model, "precision", None)))
        warning = limits.mismatch(s.max_pixels, s.max_image_side, OPENCV_LIMITS)
        if warning:
            log.warning("%s", warning)
        self.batcher = MicroBatcher(
            self.model.forward,
            max_batch_size=s.max_batch_size,
            max_batch_delay_s=s.max_batch_delay_s,
            max_queue_tiles=s.max_queue_tiles,
            batches_in_flight=s.batches_in_flight,
            observer=self.metrics,
        )
        self.service = EnhanceService(
            self.batcher,
            tile_size=s.tile_size,
            tile_overlap=s.tile_overlap,
            max_pixels=s.max_pixels,
            max_side=s.max_image_side,
            pass_through_jpeg_quality=s.pass_through_jpeg_quality,
            request_timeout_s=s.request_timeout_s,
            metrics=self.metrics,
        )
        self._warm_task = asyncio.create_task(self._warm_up_and_serve(), name="enhancer-warm-up")

    async def _warm_up_and_serve(self) -> None:
        assert self.model is not None and self.batcher is not None
        try:
            shapes = tiling.bucket_shapes(self.settings.tile_size)
            log.info("warming up %d tile shapes on %s", len(shapes), self.model.device)
            await asyncio.to_thread(self.model.warm_up, shapes, self.settings.max_batch_size)
            await self.batcher.start()
            self._batcher_started = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failure = f"model warm-up failed: {exc}"
            log.exception("model warm-up failed; the service will stay unready")
            return
        self.ready = True
        self.metrics.ready.set(1)
        self._probe_task = asyncio.create_task(self._probe_while_failing(), name="enhancer-model-probe")
        log.info("ready: serving on %s", self.model.device)

    @property
    def model_failing(self) -> bool:
        """The last FAILED_BATCHES_UNREADY batches or more all failed: the model cannot run now."""
        return self.batcher is not None and self.batcher.consecutive_failures >= FAILED_BATCHES_UNREADY

    async def _probe_while_failing(self) -> None:
        """While the model is failing, run a one-tile batch now and then to notice its recovery."""
        shape = min(tiling.bucket_shapes(self.settings.tile_size))
        probe = np.full((1, *shape, 3), 0.5, np.float32)
        loop = asyncio.get_running_loop()
        last_probe = loop.time()
        while True:
            await asyncio.sleep(min(self.probe_interval_s, 0.25))  # a cheap check, not a batch
            if not self.model_failing or self.draining:
                continue
            if loop.time() - last_probe < self.probe_interval_s:
                continue
            last_probe = loop.time()
            try:
                await self.batcher.submit(probe)
                log.info("model probe batch succeeded: ready again")
            except Exception as exc:
                log.warning("model probe batch failed (%s); staying unready", exc)

    async def wait_ready(self) -> None:
        """Wait for warm-up to finish (for tests and the CLI); raises if it failed."""
        if self._warm_task is not None:
            await asyncio.shield(self._warm_task)
        if not self.ready:
            raise RuntimeError(self.failure or "the runtime was not started")

    def readiness_error(self) -> EnhancerError | None:
        """Why /readyz is 503 (not started, warming up, model failing, shutting down), or None."""
        if self.draining:
            return ShuttingDownError(
                "the server is shutting down and takes no new work; retry on another replica",
                retry_after_s=max(1.0, self.shutdown_seconds_left()),
            )
        try:
            self.require_service()
        except NotReadyError as exc:
            return exc
        if self.model_failing:
            return NotReadyError(
                f"the model cannot run: its last {self.batcher.consecutive_failures} batches failed "
                f"({self.batcher.last_failure}); a probe batch retries every "
                f"{self.probe_interval_s:g} s, see the server log",
                retry_after_s=self.probe_interval_s,
            )
        return None

    @property
    def is_ready(self) -> bool:
        return self.readiness_error() is None

    # --- uploads in flight and shutdown -----------------------------------------------------

    def refuse_upload(self) -> EnhancerError | None:
        """The answer for a new upload while shutting down (None: take it)."""
        if not self.draining:
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
        if not self.draining:
            self.draining = True
            self._shutdown_deadline = time.monotonic() + timeout_s
            self.metrics.ready.set(0)
            log.info(
                "shutting down: refusing new uploads, %d in flight may finish within %.0f s",
                self.uploads_in_flight,
                timeout_s,
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
        """The pipeline, or a 503 that says why it cannot take requests yet."""
        if self.failure is not None:
            raise NotReadyError(
                f"the service cannot process images ({self.failure}); see the server log",
                retry_after_s=30,
            )
        if not self.ready or self.service is None:
            raise NotReadyError(
                "the model is still loading and warming up; retry in a few seconds",
                retry_after_s=2,
            )
        return self.service

    @property
    def healthy(self) -> bool:
        """False once something is broken that only a restart fixes (warm-up failed).

        A failed batch is not such a thing: the batcher keeps serving and the next batch may
        succeed, so it only shows as `degraded` in /healthz, never as a restart or unreadiness
        (an unready replica gets no traffic, so it could never prove it recovered).
        """
        return self.failure is None

    @property
    def degraded(self) -> bool:
        """The most recent batch failed."""
        return self.batcher is not None and self._batcher_started and not self.batcher.healthy

    async def stop(self) -> None:
        """Stop taking work, let queued tiles finish, then drop the rest.

        Queued work gets what is left of the shutdown deadline `drain` set (shutdown_timeout_s
        from SIGTERM), or shutdown_timeout_s if `drain` was not called: never two timeouts.
        """
        self.ready = False
        self.metrics.ready.set(0)
        if self._shutdown_deadline is None:
            self._shutdown_deadline = time.monotonic() + self.settings.shutdown_timeout_s
        self.draining = True
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
