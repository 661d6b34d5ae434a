"""The serving pipeline: the synchronous steps of enhancer.pipeline, with the tiles run by the
shared micro-batcher.

It knows nothing of HTTP: it takes bytes and returns bytes plus stage timings, and fails with the
`enhancer.errors` types (the batcher's exceptions are translated in one place, `batcher_error`).
The CPU-heavy steps run in worker threads so the event loop keeps accepting requests and feeding
the batcher while an image is decoded or encoded. A cancelled request (its client left) still
waits for the step its thread is in to end: a thread cannot be stopped, and until it ends it holds
the image's pixels, so `enhance` returns or raises only once they are let go (the pixel budget is
released after that). What happened is reported to a
`ServiceObserver` (the metrics), never written to metrics objects here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from enhancer.batching import BatcherClosedError, BatchFailedError, MicroBatcher, QueueFullError
from enhancer.conditioning import Strength
from enhancer.errors import (
    EnhancerError,
    InferenceFailedError,
    OverloadedError,
    RequestTimeoutError,
    ServiceUnavailableError,
)
from enhancer.imaging import OutputFormat
from enhancer.models.contract import ModelSpec
from enhancer.pipeline import EnhanceResult, Pipeline, Prepared

if TYPE_CHECKING:
    from enhancer.config import Settings

#: What the batcher raises for a request; `batcher_error` says what each means to the client.
BATCHER_ERRORS = (QueueFullError, BatchFailedError, BatcherClosedError)


async def _in_worker_thread(function, *args):
    """`function(*args)` in a worker thread; if the caller is cancelled meanwhile, the cancellation
    waits for the thread to end before it propagates (see the module docstring)."""
    work = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait({work})
        raise


def batcher_error(exc: Exception) -> EnhancerError:
    """The client-facing error (with its HTTP status) for one of BATCHER_ERRORS."""
    if isinstance(exc, QueueFullError):
        return OverloadedError(str(exc), retry_after_s=exc.retry_after_s)
    if isinstance(exc, BatchFailedError):
        cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else "error"
        return InferenceFailedError(
            f"the model failed while processing this image ({cause}); the server is still "
            "running, so retrying may succeed; details are in the server log"
        )
    if isinstance(exc, BatcherClosedError):
        return ServiceUnavailableError("the server is shutting down; retry in a moment", retry_after_s=2)
    raise TypeError(f"not a batcher error: {exc!r}") from exc


class ServiceObserver(Protocol):
    """Told about every enhanced image (metrics). Called on the event loop; must not raise."""

    def on_enhanced(self, model: str, timings: Mapping[str, float], passed_through: str | None) -> None: ...


class EnhanceService:
    """Runs one request through the pipeline; many requests share one batcher concurrently."""

    def __init__(
        self,
        pipeline: Pipeline,
        batcher: MicroBatcher,
        *,
        request_timeout_s: float,
        observer: ServiceObserver | None = None,
    ):
        self.pipeline = pipeline
        self.batcher = batcher
        self.request_timeout_s = request_timeout_s
        self.observer = observer
        self._in_flight = 0  #: enhance() calls under way, to tell an image that is alone

    @classmethod
    def from_settings(
        cls, settings: Settings, batcher: MicroBatcher, observer: ServiceObserver | None = None
    ) -> EnhanceService:
        """The service the settings describe (resolved for the device, see Settings.for_device)."""
        return cls(
            Pipeline.from_settings(settings), batcher, request_timeout_s=settings.request_timeout_s, observer=observer
        )

    def _timeout_error(self) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"the image was not enhanced within {self.request_timeout_s:g} s "
            "(ENHANCER_REQUEST_TIMEOUT_S); the server is busy or the image is very large: "
            "retry later or send a smaller image"
        )

    async def enhance(
        self, data: bytes, spec: ModelSpec, fmt: OutputFormat, quality: int = 95, strength: Strength = Strength.auto
    ) -> EnhanceResult:
        """Enhance encoded image bytes with the model `spec` describes and encode the result as `fmt`."""
        deadline = time.perf_counter() + self.request_timeout_s
        self._in_flight += 1
        try:
            alone = self._in_flight == 1  # no other image decoded, queued, run or encoded here: solo tiles
            prepared = await _in_worker_thread(self.pipeline.prepare, data, spec, strength, alone)
            if prepared.job is not None:
                await self._run_tiles(prepared, deadline)
            result = await _in_worker_thread(self.pipeline.finish, prepared, fmt, quality)
        finally:
            self._in_flight -= 1
        if self.observer is not None:
            self.observer.on_enhanced(spec.name, result.timings, result.passed_through)
        return result

    async def _run_tiles(self, prepared: Prepared, deadline: float) -> None:
        """The one step that differs from enhancer.pipeline.Pipeline.run: the batcher runs the tiles."""
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise self._timeout_error()
        job = prepared.take_job()
        submitted = self.batcher.submit(job.model, job.tiles, job.inputs)
        del job  # only the batcher holds the tiles now: it frees them once the last is in a batch
        try:
            async with asyncio.timeout(remaining):
                outputs, timings = await submitted
        except TimeoutError:
            raise self._timeout_error() from None
        except BATCHER_ERRORS as exc:
            raise batcher_error(exc) from exc
        prepared.outputs = outputs
        prepared.timings.update(queue=timings.queue_s, infer=timings.infer_s)
