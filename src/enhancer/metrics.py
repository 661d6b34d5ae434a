"""Prometheus metrics of one app, on its own registry so several apps can live in one process.

`Metrics` is also the batcher's `BatchObserver` and the service's `ServiceObserver`: they report
batch sizes, waits, drops, queue depth and stage timings through it without knowing Prometheus
exists. Metrics about inference carry a `model` label (the model's name).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: Latency buckets from 1 ms (a tiny tile) to 5 minutes (a 50 MP image behind a full queue).
_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: Batch-size buckets: powers of two cover any batch size setting without knowing it in advance.
_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """All counters, gauges and histograms the service exports at /metrics."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "enhancer_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "enhancer_http_request_duration_seconds",
            "Time from request start to the end of the response, by route template.",
            ["route"],
            buckets=_SECONDS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "enhancer_stage_duration_seconds",
            "Per-request time in each pipeline stage (decode, tile, queue, infer, encode).",
            ["stage"],
            buckets=_SECONDS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "enhancer_queue_depth_tiles", "Tiles waiting for the model right now.", registry=r
        )
        self.batch_size = Histogram(
            "enhancer_batch_size_tiles",
            "Tiles per forward pass of the model, by model.",
            ["model"],
            buckets=_BATCH_SIZES,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "enhancer_queue_wait_seconds",
            "Time a request's first tile waited in the queue before its batch started, by model.",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "enhancer_inference_seconds",
            "Wall time of one forward pass (one batch), by model.",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.tiles_processed = Counter(
            "enhancer_tiles_processed", "Tiles that went through the model, by model.", ["model"], registry=r
        )
        self.passed_through = Counter(
            "enhancer_images_passed_through",
            "Images answered with their own pixels, without the model (a JPEG at or above "
            "ENHANCER_PASS_THROUGH_JPEG_QUALITY, or strength=off).",
            registry=r,
        )
        self.tiles_dropped = Counter(
            "enhancer_tiles_dropped",
            "Queued tiles discarded because their request went away (client gone, timeout), by model.",
            ["model"],
            registry=r,
        )
        self.ready = Gauge(
            "enhancer_ready",
            "1 while /readyz is 200 (every model warmed up and running, not shutting down), else 0.",
            registry=r,
        )
        self.uploads_in_flight = Gauge(
            "enhancer_uploads_in_flight",
            "Upload requests admitted and not yet answered (a shutdown waits for them).",
            registry=r,
        )
        self.pixels_in_flight = Gauge(
            "enhancer_pixels_in_flight",
            "Image pixels admitted and not yet answered (decoded, being split, queued as tiles, "
            "stitched or encoded), as charged from the uploads' headers.",
            registry=r,
        )
        self.max_pixels_in_flight = Gauge(
            "enhancer_max_pixels_in_flight",
            "The budget on enhancer_pixels_in_flight (ENHANCER_MAX_PIXELS_IN_FLIGHT, or derived from "
            "memory): an upload that does not fit gets 503.",
            registry=r,
        )

    # --- BatchObserver ---------------------------------------------------------------------
    def on_batch(self, model: str, size: int, infer_s: float) -> None:
        self.batch_size.labels(model=model).observe(size)
        self.inference_seconds.labels(model=model).observe(infer_s)
        self.tiles_processed.labels(model=model).inc(size)

    def on_batch_failed(self, model: str, size: int, error: BaseException) -> None:
        pass  # the failed requests show in enhancer_http_requests_total{status="500"}

    def on_queue_wait(self, model: str, seconds: float) -> None:
        self.queue_wait_seconds.labels(model=model).observe(seconds)

    def on_tiles_dropped(self, model: str, count: int) -> None:
        self.tiles_dropped.labels(model=model).inc(count)

    def on_queue_depth(self, tiles: int) -> None:
        self.queue_depth.set(tiles)

    # --- ServiceObserver -------------------------------------------------------------------
    def on_enhanced(self, model: str, timings: Mapping[str, float], passed_through: str | None) -> None:
        for stage, seconds in timings.items():
            self.stage_seconds.labels(stage=stage).observe(seconds)
        if passed_through is not None:
            self.passed_through.inc()

    # --- HTTP ------------------------------------------------------------------------------
    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.request_seconds.labels(route=route).observe(seconds)

    # --- per-client limits (registered only when a limit is on) -----------------------------
    def track_client_limits(self, recently_limited: Callable[[], int]) -> Callable[[str], None]:
        """Export the per-client limits' refusals; returns the callback that counts one.

        No label names a client (keys or addresses would be unbounded and sensitive): refusals
        are counted by limit, and `recently_limited` gives how many distinct clients were refused.
        """
        refusals = Counter(
            "enhancer_client_limit_refusals",
            "Uploads refused with 429 by a per-client limit, by limit (concurrency, megapixels).",
            ["limit"],
            registry=self.registry,
        )
        clients = Gauge(
            "enhancer_clients_limited",
            "Distinct clients refused by a per-client limit within the last 60 s.",
            registry=self.registry,
        )
        clients.set_function(recently_limited)
        return lambda limit: refusals.labels(limit=limit).inc()

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format."""
        return generate_latest(self.registry)
