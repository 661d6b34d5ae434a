"""Async HTTP load generator in the manner of Triton's perf_analyzer.

* Closed loop (`closed_loop`): `concurrency` workers each keep exactly one request in flight.
  Time is cut into measurement windows (at least `window_s` seconds *and* `min_requests`
  completed requests, whichever ends later); a request belongs to the window in which it
  completed. Windows repeat until the last three agree: each one's throughput and mean latency
  within +-`stability` (10 %) of the three-window mean, as perf_analyzer's stability check does.
  The level's figures are computed over the requests of those three windows together.
* Open loop (`open_loop`): requests are sent at Poisson-distributed arrival times with a fixed
  mean rate, whether or not earlier ones have finished, so latency is measured at a known offered
  load (a closed loop cannot overload a server, an open loop can).

Request bodies are built once (multipart encoded ahead of time) so the client spends as little
CPU as possible: it shares the machine with the server. The client's own CPU use is reported.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import asdict, dataclass, field

import httpx

from benchmarks.harness.common import log, metric_delta, parse_prometheus, percentiles
from benchmarks.harness.inputs import InputImage

STAGES = ("decode", "tile", "queue", "infer", "encode")


@dataclass(frozen=True)
class Payload:
    """One ready-to-send multipart request body."""

    name: str
    body: bytes
    content_type: str
    megapixels: float

    @classmethod
    def from_image(cls, image: InputImage) -> Payload:
        boundary = uuid.uuid4().hex
        data = image.read()
        body = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="image"; filename="{image.path.name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
        return cls(image.name, body, f"multipart/form-data; boundary={boundary}", image.megapixels)


@dataclass
class Sample:
    start: float
    end: float
    status: int  # HTTP status, or 0 for a transport error
    megapixels: float
    timing: dict[str, float] = field(default_factory=dict)  # Server-Timing, seconds
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def ok(self) -> bool:
        return self.status == 200


def parse_server_timing(header: str | None) -> dict[str, float]:
    """`decode;dur=1.2, infer;dur=30.5` -> {"decode": 0.0012, "infer": 0.0305} (seconds)."""
    result = {}
    for part in (header or "").split(","):
        name, _, params = part.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur":
                try:
                    result[name.strip()] = float(value) / 1000.0
                except ValueError:
                    pass
    return result


def summarize(samples: list[Sample], duration: float) -> dict:
    """Throughput, latency percentiles, errors and the mean Server-Timing split of some samples."""
    ok = [s for s in samples if s.ok]
    errors: dict[str, int] = {}
    for s in samples:
        if not s.ok:
            key = str(s.status) if s.status else (s.error or "transport error")
            errors[key] = errors.get(key, 0) + 1
    lat = [s.latency for s in ok]
    stages = {}
    for stage in STAGES:
        values = [s.timing[stage] for s in ok if stage in s.timing]
        if values:
            stages[stage] = sum(values) / len(values)
    return {
        "requests": len(samples),
        "ok": len(ok),
        "errors": errors,
        "duration_s": duration,
        "req_per_s": len(ok) / duration if duration > 0 else 0.0,
        "mp_per_s": sum(s.megapixels for s in ok) / duration if duration > 0 else 0.0,
        "latency_mean_s": sum(lat) / len(lat) if lat else None,
        **{f"{k}_s": v for k, v in percentiles(lat).items()},
        "latency_max_s": max(lat) if lat else None,
        "server_timing_mean_s": stages,
    }


class LoadGenerator:
    """Sends `payloads` (cycled) to `url`; optionally scrapes the server's /metrics per window."""

    def __init__(
        self,
        url: str,
        payloads: list[Payload],
        *,
        params: dict | None = None,
        metrics_url: str | None = None,
        server_pid: int | None = None,
        timeout_s: float = 900.0,
    ):
        self.url = url
        self.payloads = payloads
        self.params = params or {"format": "png"}
        self.metrics_url = metrics_url
        self.server_pid = server_pid
        self.timeout_s = timeout_s
        self._next = 0

    def _payload(self) -> Payload:
        payload = self.payloads[self._next % len(self.payloads)]
        self._next += 1
        return payload

    async def send(self, client: httpx.AsyncClient, payload: Payload | None = None) -> Sample:
        payload = payload or self._payload()
        start = time.perf_counter()
        try:
            response = await client.post(
                self.url,
                content=payload.body,
                headers={"Content-Type": payload.content_type},
                params=self.params,
            )
            await response.aread()
            end = time.perf_counter()
            return Sample(
                start, end, response.status_code, payload.megapixels,
                parse_server_timing(response.headers.get("server-timing")),
                None if response.status_code == 200 else response.text[:200],
            )
        except httpx.HTTPError as exc:
            return Sample(start, time.perf_counter(), 0, payload.megapixels, error=type(exc).__name__)

    def client(self, connections: int) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(timeout=self.timeout_s, limits=limits)

    async def _scrape(self, client: httpx.AsyncClient) -> dict:
        if not self.metrics_url:
            return {}
        try:
            response = await client.get(self.metrics_url)
            return parse_prometheus(response.text)
        except httpx.HTTPError:
            return {}

    def _server_cpu(self) -> float | None:
        if self.server_pid is None:
            return None
        try:
            import psutil

            times = psutil.Process(self.server_pid).cpu_times()
            return times.user + times.system
        except Exception:
            return None

    # -- closed loop ------------------------------------------------------------------------------

    async def closed_loop(
        self,
        concurrency: int,
        *,
        window_s: float = 5.0,
        min_requests: int = 20,
        max_windows: int = 10,
        stability: float = 0.10,
        warmup_requests: int | None = None,
        max_window_s: float = 120.0,
    ) -> dict:
        """Measure one concurrency level until three windows agree (or `max_windows` ran)."""
        samples: list[Sample] = []
        stop = asyncio.Event()
        async with self.client(concurrency + 2) as client:

            async def worker() -> None:
                while not stop.is_set():
                    samples.append(await self.send(client))

            workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
            try:
                # Warm-up: let every worker finish one request so the pipeline is full.
                warmup = warmup_requests if warmup_requests is not None else concurrency
                t0 = time.perf_counter()
                while len(samples) < warmup and time.perf_counter() - t0 < max_window_s:
                    await asyncio.sleep(0.02)
                windows: list[dict] = []
                all_window_samples: list[list[Sample]] = []
                stable = False
                while len(windows) < max_windows:
                    w_start = time.perf_counter()
                    first = len(samples)
                    cpu0, server_cpu0 = time.process_time(), self._server_cpu()
                    m0 = await self._scrape(client)
                    while True:
                        await asyncio.sleep(0.05)
                        elapsed = time.perf_counter() - w_start
                        done = len(samples) - first
                        if (elapsed >= window_s and done >= min_requests) or elapsed >= max_window_s:
                            break
                    w_end = time.perf_counter()
                    window_samples = samples[first:]
                    del samples[: len(samples)]  # keep memory flat; window_samples holds them
                    m1 = await self._scrape(client)
                    stats = summarize(window_samples, w_end - w_start)
                    stats["client_cpu_fraction"] = (time.process_time() - cpu0) / (w_end - w_start)
                    server_cpu1 = self._server_cpu()
                    if server_cpu0 is not None and server_cpu1 is not None:
                        stats["server_cpu_cores"] = (server_cpu1 - server_cpu0) / (w_end - w_start)
                    stats["server_metrics"] = server_window_metrics(m0, m1, w_end - w_start)
                    windows.append(stats)
                    all_window_samples.append(window_samples)
                    log(
                        f"  c={concurrency} window {len(windows)}: {stats['req_per_s']:.2f} req/s, "
                        f"p50 {fmt_s(stats['p50_s'])}, p99 {fmt_s(stats['p99_s'])}, "
                        f"errors {sum(stats['errors'].values())}"
                    )
                    if len(windows) >= 3 and _stable(windows[-3:], stability):
                        stable = True
                        break
            finally:
                stop.set()
                await asyncio.gather(*workers, return_exceptions=True)
        last = all_window_samples[-3:]
        merged = [s for group in last for s in group]
        duration = sum(w["duration_s"] for w in windows[-3:])
        result = summarize(merged, duration)
        result.update(
            concurrency=concurrency,
            stable=stable,
            windows=len(windows),
            window_req_per_s=[w["req_per_s"] for w in windows],
            client_cpu_fraction=_mean(w["client_cpu_fraction"] for w in windows[-3:]),
            server_cpu_cores=_mean(w.get("server_cpu_cores") for w in windows[-3:]),
            server_metrics=_merge_metrics([w["server_metrics"] for w in windows[-3:]]),
        )
        return result

    async def sweep(self, levels: list[int], **kwargs) -> list[dict]:
        results = []
        for level in levels:
            log(f"concurrency {level}")
            results.append(await self.closed_loop(level, **kwargs))
        return results

    # -- open loop --------------------------------------------------------------------------------

    async def open_loop(
        self, rate: float, *, duration_s: float, max_in_flight: int = 256, seed: int = 0, drain_s: float = 120.0
    ) -> dict:
        """Poisson arrivals at `rate` req/s for `duration_s`; latency of each request."""
        rng = random.Random(seed)
        samples: list[Sample] = []
        skipped = 0
        tasks: set[asyncio.Task] = set()
        async with self.client(max_in_flight) as client:

            async def one() -> None:
                samples.append(await self.send(client))

            start = time.perf_counter()
            cpu0, server_cpu0 = time.process_time(), self._server_cpu()
            m0 = await self._scrape(client)
            next_at = start
            sent = 0
            while True:
                next_at += rng.expovariate(rate)
                if next_at - start >= duration_s:
                    break
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(tasks) >= max_in_flight:
                    skipped += 1  # the client will not queue unboundedly; counted as an error
                    continue
                task = asyncio.create_task(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            send_end = time.perf_counter()
            if tasks:
                await asyncio.wait(set(tasks), timeout=drain_s)
            end = time.perf_counter()
            m1 = await self._scrape(client)
            for task in list(tasks):
                task.cancel()
        result = summarize(samples, end - start)
        result.update(
            offered_req_per_s=rate,
            sent=sent,
            sent_per_s=sent / (send_end - start),
            client_skipped=skipped,
            client_cpu_fraction=(time.process_time() - cpu0) / (end - start),
            server_metrics=server_window_metrics(m0, m1, end - start),
        )
        server_cpu1 = self._server_cpu()
        if server_cpu0 is not None and server_cpu1 is not None:
            result["server_cpu_cores"] = (server_cpu1 - server_cpu0) / (end - start)
        return result

    async def run_closed(
        self, client: httpx.AsyncClient, concurrency: int, *, stop: asyncio.Event | None = None,
        duration_s: float | None = None,
    ) -> list[Sample]:
        """Closed loop with `concurrency` workers until `stop` is set or `duration_s` passed."""
        stop = stop or asyncio.Event()
        samples: list[Sample] = []

        async def worker() -> None:
            while not stop.is_set():
                samples.append(await self.send(client))

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        if duration_s is not None:
            try:
                await asyncio.wait_for(stop.wait(), duration_s)
            except TimeoutError:
                stop.set()
        await asyncio.gather(*workers)
        return samples

    async def one_request(self, payload: Payload) -> Sample:
        async with self.client(2) as client:
            return await self.send(client, payload)


def server_window_metrics(before: dict, after: dict, wall_s: float) -> dict:
    """What the server did between two /metrics scrapes: batches, batch sizes, model busy time."""
    if not before or not after:
        return {}
    batches = metric_delta(before, after, "enhancer_inference_seconds_count")
    infer = metric_delta(before, after, "enhancer_inference_seconds_sum")
    tiles = metric_delta(before, after, "enhancer_batch_size_tiles_sum")
    buckets = {}
    for (name, labels), value in after.items():
        if name == "enhancer_batch_size_tiles_bucket":  # summed over the models' series
            le = dict(labels)["le"]
            buckets[le] = buckets.get(le, 0.0) + value - before.get((name, labels), 0.0)
    stage_sums = {
        stage: metric_delta(before, after, "enhancer_stage_duration_seconds_sum", stage=stage) for stage in STAGES
    }
    return {
        "wall_s": wall_s,
        "batches": batches,
        "tiles": tiles,
        "infer_busy_s": infer,
        "model_busy_fraction": infer / wall_s if wall_s > 0 else None,
        "mean_batch_size": tiles / batches if batches else None,
        "mean_batch_infer_s": infer / batches if batches else None,
        "batch_size_cumulative": buckets,
        "stage_sum_s": stage_sums,
    }


def _merge_metrics(items: list[dict]) -> dict:
    items = [m for m in items if m]
    if not items:
        return {}
    wall = sum(m["wall_s"] for m in items)
    batches = sum(m["batches"] for m in items)
    tiles = sum(m["tiles"] for m in items)
    infer = sum(m["infer_busy_s"] for m in items)
    buckets: dict[str, float] = {}
    for m in items:
        for k, v in m["batch_size_cumulative"].items():
            buckets[k] = buckets.get(k, 0.0) + v
    return {
        "wall_s": wall,
        "batches": batches,
        "tiles": tiles,
        "infer_busy_s": infer,
        "model_busy_fraction": infer / wall if wall else None,
        "mean_batch_size": tiles / batches if batches else None,
        "mean_batch_infer_s": infer / batches if batches else None,
        "batch_size_cumulative": buckets,
        "stage_sum_s": {s: sum(m["stage_sum_s"].get(s, 0.0) for m in items) for s in STAGES},
    }


def _stable(windows: list[dict], stability: float) -> bool:
    for key in ("req_per_s", "latency_mean_s"):
        values = [w[key] for w in windows]
        if any(v is None or v <= 0 for v in values):
            return False
        mean = sum(values) / len(values)
        if any(abs(v - mean) > stability * mean for v in values):
            return False
    return True


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def sample_dict(sample: Sample) -> dict:
    return asdict(sample)
