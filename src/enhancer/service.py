"""The enhancement pipeline: decode -> tile -> micro-batched model -> stitch -> encode.

It knows nothing of HTTP: it takes bytes and returns bytes plus stage timings, and fails with the
`enhancer.errors` types. CPU-heavy steps (decode, split, stitch, encode) run in worker threads so
the event loop keeps accepting requests and feeding the batcher while an image is being decoded.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from enhancer import imaging, tiling
from enhancer.batching import BatcherClosedError, BatchFailedError, MicroBatcher, QueueFullError
from enhancer.errors import (
    InferenceFailedError,
    OverloadedError,
    RequestTimeoutError,
    ServiceUnavailableError,
)
from enhancer.imaging import OutputFormat
from enhancer.metrics import Metrics

#: Server-Timing / metrics stage names, in pipeline order.
STAGES = ("decode", "tile", "queue", "infer", "encode")


def pass_through_reason(info: imaging.ImageInfo, min_jpeg_quality: int) -> str | None:
    """Why the image `info` describes should skip the model (e.g. "jpeg-quality=95"), or None.

    A JPEG saved at a high quality has little damage to remove, and there the blind model's
    measured gain is negative: such an image is better answered with its own pixels.
    """
    quality = info.jpeg.quality if info.jpeg is not None else None
    if quality is not None and quality >= min_jpeg_quality:
        return f"jpeg-quality={quality}"
    return None


@dataclass(frozen=True)
class EnhanceResult:
    """An encoded answer plus the seconds each stage took."""

    body: bytes
    format: OutputFormat
    width: int
    height: int
    timings: dict[str, float] = field(default_factory=dict)
    #: Why the model did not run (the image was passed through), or None when it did.
    passed_through: str | None = None


class EnhanceService:
    """Runs one request through the pipeline; many requests share one batcher concurrently."""

    def __init__(
        self,
        batcher: MicroBatcher,
        *,
        tile_size: int,
        tile_overlap: int,
        max_pixels: int | None,
        request_timeout_s: float,
        metrics: Metrics | None = None,
        max_side: int | None = None,
        pass_through_jpeg_quality: int = 101,
    ):
        self.batcher = batcher
        self.pass_through_jpeg_quality = pass_through_jpeg_quality
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.max_pixels = max_pixels
        self.max_side = max_side
        self.request_timeout_s = request_timeout_s
        self.metrics = metrics

    def _split(self, rgb: np.ndarray) -> tuple[tiling.TilePlan, np.ndarray]:
        plan = tiling.plan_tiles(rgb.shape[0], rgb.shape[1], self.tile_size, self.tile_overlap)
        return plan, tiling.split(rgb, plan)

    @staticmethod
    def _stitch(tiles: np.ndarray, plan: tiling.TilePlan) -> np.ndarray:
        image = tiling.stitch(tiles, plan)
        return np.clip(image, 0.0, 1.0, out=image)  # in place: no second full-size copy

    def _timeout_error(self) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"the image was not enhanced within {self.request_timeout_s:g} s "
            "(ENHANCER_REQUEST_TIMEOUT_S); the server is busy or the image is very large: "
            "retry later or send a smaller image"
        )

    async def enhance(self, data: bytes, fmt: OutputFormat, quality: int = 95) -> EnhanceResult:
        """Enhance encoded image bytes and encode the result as `fmt`."""
        clock = time.perf_counter
        started = clock()
        deadline = started + self.request_timeout_s
        timings: dict[str, float] = {}

        t = clock()
        image = await asyncio.to_thread(
            imaging.decode, data, max_pixels=self.max_pixels, max_side=self.max_side
        )
        timings["decode"] = clock() - t
        info = image.info

        reason = pass_through_reason(info, self.pass_through_jpeg_quality)
        if reason is not None:
            timings.update(tile=0.0, queue=0.0, infer=0.0)
            return await self._answer(image.rgb, info, fmt, quality, timings, passed_through=reason)

        t = clock()
        plan, tiles = await asyncio.to_thread(self._split, image.rgb)
        timings["tile"] = clock() - t
        # From here on every full-size array is dropped as soon as the next stage has its own, so
        # peak memory is about two copies of the image (tiles in + tiles out), not five or six.
        del image

        remaining = deadline - clock()
        if remaining <= 0:
            raise self._timeout_error()
        try:
            async with asyncio.timeout(remaining):
                out_tiles, batch_timings = await self.batcher.submit(tiles)
        except TimeoutError:
            raise self._timeout_error() from None
        except QueueFullError as exc:
            raise OverloadedError(str(exc), retry_after_s=exc.retry_after_s) from None
        except BatchFailedError as exc:
            cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else "error"
            raise InferenceFailedError(
                f"the model failed while processing this image ({cause}); the server is still "
                "running, so retrying may succeed; details are in the server log"
            ) from exc
        except BatcherClosedError:
            raise ServiceUnavailableError(
                "the server is shutting down; retry in a moment", retry_after_s=2
            ) from None
        del tiles
        timings["queue"] = batch_timings.queue_s
        timings["infer"] = batch_timings.infer_s

        t = clock()
        rgb = await asyncio.to_thread(self._stitch, out_tiles, plan)
        del out_tiles
        timings["tile"] += clock() - t

        return await self._answer(rgb, info, fmt, quality, timings)

    async def _answer(
        self,
        rgb: np.ndarray,
        info: imaging.ImageInfo,
        fmt: OutputFormat,
        quality: int,
        timings: dict[str, float],
        passed_through: str | None = None,
    ) -> EnhanceResult:
        """Encode `rgb` like the input `info` describes, record the stage timings, build the result."""
        t = time.perf_counter()
        body = await asyncio.to_thread(imaging.encode, rgb, fmt, quality=quality, info=info)
        timings["encode"] = time.perf_counter() - t
        if self.metrics is not None:
            self.metrics.observe_stages(timings)
            if passed_through is not None:
                self.metrics.passed_through.inc()
        return EnhanceResult(body=body, format=fmt, width=info.width, height=info.height,
                             timings=timings, passed_through=passed_through)  # fmt: skip
