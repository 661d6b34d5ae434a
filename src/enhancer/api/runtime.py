"""What a running app owns: the model, the batcher, the pipeline, and whether it is ready.

Start-up loads the model synchronously (a missing model stops the server at once with a clear
error), then warms up in the background so `/healthz` answers immediately and `/readyz` turns 200
only when every tile shape has been run once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import numpy as np

from enhancer import tiling
from enhancer.batching import MicroBatcher
from enhancer.config import Settings
from enhancer.errors import NotReadyError
from enhancer.metrics import Metrics
from enhancer.service import EnhanceService

log = logging.getLogger(__name__)


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
        self._batcher_started = False

    async def start(self) -> None:
        """Load the model (unless one was given), then warm up in the background."""
        s = self.settings
        if self.model is None:
            from enhancer.model import load_model  # TensorFlow is imported only here

            self.model = await asyncio.to_thread(
                load_model,
                s.model_dir,
                intra_op_threads=s.intra_op_threads,
                inter_op_threads=s.inter_op_threads,
                memory_growth=s.gpu_memory_growth,
                precision=s.precision,
                xla=s.xla,
            )
        # tile and batch sizes that were not set follow the device TensorFlow chose (GPU or CPU)
        self.settings = s = s.for_device(getattr(self.model, "device_kind", "cpu"))
        log.info("%s", s.describe_inference(self.model.device, getattr(self.model, "precision", None)))
        self.batcher = MicroBatcher(
            self.model.forward,
            max_batch_size=s.max_batch_size,
            max_batch_delay_s=s.max_batch_delay_s,
            max_queue_tiles=s.max_queue_tiles,
            observer=self.metrics,
        )
        self.service = EnhanceService(
            self.batcher,
            tile_size=s.tile_size,
            tile_overlap=s.tile_overlap,
            max_pixels=s.max_pixels,
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
        log.info("ready: serving on %s", self.model.device)

    async def wait_ready(self) -> None:
        """Wait for warm-up to finish (for tests and the CLI); raises if it failed."""
        if self._warm_task is not None:
            await asyncio.shield(self._warm_task)
        if not self.ready:
            raise RuntimeError(self.failure or "the runtime was not started")

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
        """Stop taking work, let queued tiles finish (up to shutdown_timeout_s), then drop the rest."""
        self.ready = False
        self.metrics.ready.set(0)
        if self._warm_task is not None and not self._warm_task.done():
            self._warm_task.cancel()
            try:
                await self._warm_task
            except (asyncio.CancelledError, Exception):
                pass
        if self.batcher is None or not self._batcher_started:
            return
        try:
            await asyncio.wait_for(
                self.batcher.stop(drain=True), timeout=self.settings.shutdown_timeout_s
            )
        except TimeoutError:
            log.warning(
                "queued work did not finish within %.0fs; dropping it", self.settings.shutdown_timeout_s
            )
            await self.batcher.stop(drain=False)
