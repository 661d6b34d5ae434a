"""The asyncio micro-batcher: tiles from many requests in, model batches out.

Knows nothing of HTTP or TensorFlow: it serves any objects keeping the model contract
(enhancer.models.contract.Model), by name: a synchronous `forward(batch, inputs)` on numpy arrays
[N, h, w, C] returning [N, h * scale, w * scale, C] in the order of the inputs.

How it works:

* `submit` checks the tile budget (`QueueFullError` at once when full), puts the request on an
  `asyncio.Queue` and awaits the request's future.
* One worker coroutine admits queued requests and shares the model's time fairly among them, as
  fair-queueing network schedulers share a link (start-time fair queueing): every request carries
  a tag, the model time it has been given so far counted from when it arrived, in the virtual time
  of an ideal scheduler that gives each waiting request an equal share. The request with the
  smallest tag has the next turn: the batch takes its model and tile shape (the batch key) and is
  filled, smallest tag first, with tiles of that key until `max_batch_size` tiles or until
  `max_batch_delay_s` after the first tile - one deadline per batch, each wait is given only the
  time left. A tile's cost is its pixels times its model's measured seconds per pixel
  (`TileCosts`), so a request on a model four times dearer per tile gets a quarter of the tiles,
  and a newcomer's tag is the virtual time when the tile now running started: a small request that
  arrives while a 4x upscale is being served runs right after the tile in progress, not after a
  round of everyone's tiles. Tiles of equal cost are dealt round-robin in arrival order. A batch
  never mixes models, and no model or request starves another.
* Tiles travel in their own sample type (e.g. uint8, see enhancer.samples) and become float32
  [0, 1] only when their batch is stacked, so a request waiting in the queue costs its compact
  tiles, not float copies. Outputs are stored per request as the model returned them, or (the
  server's batcher, `output_dtype` uint16) as 16-bit samples, converted on a thread of their own:
  not on the event loop, and not on the model thread, which meanwhile runs the next batch (a
  batch stops counting as in flight once the model has returned).
* Extra model inputs (one float32 vector per image and input name) travel with their request's
  tiles and are stacked per batch: row i of each [batch, length] block belongs to tile i.
* The model runs on one dedicated thread (the event loop never blocks, and a model that is not
  thread-safe is only ever called from one thread). Each tile's output is stored in its request;
  the request's future resolves, with its tiles in order, when its last tile is back.
* `batches_in_flight` batches may be formed and not yet finished. With 1 (the CPU default) the
  next batch is formed only once the model is free, so a small request that arrives meanwhile
  gets into the very next batch. With 2 (the GPU default) the worker picks and stacks batch k+1
  while batch k runs, and the model thread starts it the moment k returns instead of waiting on
  the event loop (measured in benchmarks/RESULTS.md); the price is that a newcomer may wait one
  batch longer.
* A request whose awaiting task is cancelled (client gone, timeout) loses its queued tiles at
  once (logged with their number when there were any); tiles already picked for a batch are
  filtered out when the batch is stacked (with two in flight that can be while the batch before it
  still runs; its tiles then run, unanswered).
* An exception in `forward` fails only the requests with tiles in that batch (`BatchFailedError`,
  caused by the original) and drops their remaining tiles; the worker goes on serving. Every
  batch's outcome goes to the observer (readiness and metrics live there, not here).

Requests larger than the whole budget: a request is admitted when it fits under
`max_queue_tiles` *or when nothing is queued*, so any single image the service accepted can be
served (it is then alone in the queue); while it drains everyone else gets `QueueFullError`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from enhancer.models.contract import Model
from enhancer.samples import OUTPUT_DTYPE, from_unit_float, to_unit_float

if TYPE_CHECKING:
    from enhancer.config import Settings

log = logging.getLogger(__name__)

#: Retry-After estimate used before any batch has finished (no drain rate measured yet).
DEFAULT_RETRY_AFTER_S = 1.0
#: Recent batches used to measure how fast the queue drains.
DRAIN_RATE_WINDOW = 32
#: Seconds per pixel assumed for a model before its first batch is timed (a prior: 1 MP/s).
PRIOR_SECONDS_PER_PIXEL = 1e-6
#: Weight of each new timing in a model's running seconds-per-pixel estimate.
COST_SMOOTHING = 0.2
#: The smallest seconds per pixel a timing can set (keeps every tile's cost above zero).
MIN_SECONDS_PER_PIXEL = 1e-15


class QueueFullError(Exception):
    """The tile queue cannot take this request now; retrying after `retry_after_s` may work."""

    def __init__(self, queued_tiles: int, requested_tiles: int, max_queue_tiles: int, drain_rate: float | None):
        self.queued_tiles = queued_tiles
        self.requested_tiles = requested_tiles
        self.max_queue_tiles = max_queue_tiles
        self.drain_rate = drain_rate  #: tiles per second the model recently processed while busy; None if unknown
        excess = queued_tiles + requested_tiles - max_queue_tiles
        self.retry_after_s = excess / drain_rate if drain_rate else DEFAULT_RETRY_AFTER_S
        super().__init__(
            f"the server is busy: {queued_tiles} tiles are queued (limit {max_queue_tiles}) and this image "
            f"needs {requested_tiles}; retry in about {self.retry_after_s:.1f} s"
        )


class BatchFailedError(Exception):
    """The model raised while processing a batch holding this request's tiles (see __cause__)."""


class BatcherClosedError(Exception):
    """The batcher is not running (not started, or shutting down), so it takes no new work."""


@dataclass
class BatchTimings:
    """Where one request's time went, for Server-Timing and metrics."""

    queue_s: float  #: from submit until its first tile was taken into a batch
    infer_s: float  #: model time of every batch that held its tiles, summed


class BatchObserver:
    """What the batcher reports (metrics, readiness). Subclass it and override what you need; the
    defaults do nothing. Called on the event loop thread; keep the calls cheap and do not raise.
    """

    def on_batch(self, model: str, size: int, infer_s: float) -> None:
        """A batch of `size` tiles of `model` ran successfully in `infer_s` seconds of model time."""

    def on_batch_failed(self, model: str, size: int, error: BaseException) -> None:
        """A batch of `size` tiles of `model` failed with `error` (its requests got BatchFailedError)."""

    def on_queue_wait(self, model: str, seconds: float) -> None:
        """A request's first tile entered a batch `seconds` after it was submitted."""

    def on_tiles_dropped(self, model: str, count: int) -> None:
        """`count` tiles will never run: their request was cancelled or failed in another batch."""

    def on_queue_depth(self, tiles: int) -> None:
        """The number of queued tiles (admitted, not yet in a batch, all models) changed to `tiles`."""


class BatchObservers(BatchObserver):
    """Reports every event to each of several observers, in order."""

    def __init__(self, *observers: BatchObserver):
        self.observers = observers

    def on_batch(self, model: str, size: int, infer_s: float) -> None:
        for observer in self.observers:
            observer.on_batch(model, size, infer_s)

    def on_batch_failed(self, model: str, size: int, error: BaseException) -> None:
        for observer in self.observers:
            observer.on_batch_failed(model, size, error)

    def on_queue_wait(self, model: str, seconds: float) -> None:
        for observer in self.observers:
            observer.on_queue_wait(model, seconds)

    def on_tiles_dropped(self, model: str, count: int) -> None:
        for observer in self.observers:
            observer.on_tiles_dropped(model, count)

    def on_queue_depth(self, tiles: int) -> None:
        for observer in self.observers:
            observer.on_queue_depth(tiles)


class TileCosts:
    """What a tile costs in model time: its pixels times its model's seconds per pixel, a running
    average over the batches timed so far (the models differ severalfold per pixel, and only timing
    tells what a model costs on this machine). A model not yet timed is priced like the dearest one timed,
    so its first tiles do not jump the queue."""

    def __init__(self) -> None:
        self.seconds_per_pixel: dict[str, float] = {}

    def cost(self, model: str, tile_shape: tuple[int, ...]) -> float:
        rate = self.seconds_per_pixel.get(model)
        if rate is None:
            rate = max(self.seconds_per_pixel.values(), default=PRIOR_SECONDS_PER_PIXEL)
        return tile_shape[0] * tile_shape[1] * rate

    def observe(self, model: str, tiles: int, tile_shape: tuple[int, ...], seconds: float) -> None:
        """A batch of `tiles` tiles of `tile_shape` took `seconds` of model time."""
        rate = max(seconds / (tiles * tile_shape[0] * tile_shape[1]), MIN_SECONDS_PER_PIXEL)
        old = self.seconds_per_pixel.get(model)
        self.seconds_per_pixel[model] = rate if old is None else old + COST_SMOOTHING * (rate - old)


@dataclass(eq=False)
class _Request:
    model: str
    tiles: np.ndarray
    inputs: dict[str, np.ndarray]  # extra model inputs: one vector per name, for every tile
    future: asyncio.Future
    submitted_at: float
    count: int  # its tiles (kept: `tiles` is emptied once every tile is in a batch)
    arrival: int = 0  # admission order: breaks ties between equal tags
    tag: float = 0.0  # virtual time at which its next tile is due (see the module docstring)
    next_tile: int = 0  # tiles before this index have been taken into batches
    stacked: int = 0  # tiles copied into a batch's float32 block (taken and stacked may differ in time)
    finished_tiles: int = 0
    outputs: np.ndarray | None = None
    queue_s: float | None = None
    infer_s: float = 0.0

    @property
    def key(self) -> tuple[str, tuple[int, ...]]:
        """Tiles batch together only with tiles of the same key: one model, one shape."""
        return (self.model, self.tiles.shape[1:])

    @property
    def remaining(self) -> int:
        return self.count - self.next_tile

    def let_go_of_tiles(self) -> None:
        """Once every tile has been stacked into a batch the request needs none of them: keep only
        their shape and type (the key), so the image's tiles are freed before its last batch runs."""
        self.tiles = np.empty((0, *self.tiles.shape[1:]), self.tiles.dtype)


_STOP = object()  # put on the intake queue by stop(): no request comes after it


class _Slot:
    """One batch's place among the batches in flight, given back once: when the model returns (so
    the next batch can run while this one's outputs are converted) or, failing that, when the
    batch's task ends."""

    def __init__(self, slots: asyncio.Semaphore):
        self._slots = slots
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots.release()


@dataclass
class _DrainRate:
    """Tiles per second of model-busy time over the last few batches (for Retry-After)."""

    recent: deque = field(default_factory=lambda: deque(maxlen=DRAIN_RATE_WINDOW))

    def add(self, tiles: int, busy_s: float) -> None:
        self.recent.append((tiles, busy_s))

    def rate(self) -> float | None:
        busy = sum(s for _, s in self.recent)
        return sum(n for n, _ in self.recent) / busy if busy > 0 else None


class MicroBatcher:
    """Batches tiles from concurrent requests into model calls (see the module docstring)."""

    def __init__(
        self,
        models: Mapping[str, Model],
        *,
        max_batch_size: int,
        max_batch_delay_s: float,
        max_queue_tiles: int,
        batches_in_flight: int = 1,
        observer: BatchObserver | None = None,
        output_dtype: np.dtype = np.float32,
        costs: TileCosts | None = None,
    ):
        if max_batch_size < 1 or max_queue_tiles < 1 or batches_in_flight < 1 or max_batch_delay_s < 0:
            raise ValueError(
                "max_batch_size, max_queue_tiles and batches_in_flight must be >= 1 and max_batch_delay_s >= 0"
            )
        if not models:
            raise ValueError("the batcher needs at least one model")
        self._models = models
        self._in_flight_limit = batches_in_flight
        self._max_batch = max_batch_size
        self._max_delay = max_batch_delay_s
        self._max_queue = max_queue_tiles
        self._observer = observer or BatchObserver()
        self._output_dtype = np.dtype(output_dtype)
        self._intake: asyncio.Queue | None = None
        self._costs = costs or TileCosts()
        self._waiting: list[_Request] = []  # admitted requests with tiles left, in arrival order
        self._arrivals = 0
        self._virtual_time = 0.0  # when the tile dispatched last started, in virtual time
        self._advance = 0.0  # how far that tile moves virtual time once it is done
        self._live: set[_Request] = set()  # submitted and not yet answered
        self._queued = 0
        self._closing = False
        self._stopped = False
        self._stop_seen = False
        self._drain = _DrainRate()
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._converter: ThreadPoolExecutor | None = None  # outputs to integer samples, if asked

    @classmethod
    def from_settings(
        cls, models: Mapping[str, Model], settings: Settings, observer: BatchObserver | None = None
    ) -> MicroBatcher:
        """The batcher the settings describe (resolved for the device, see Settings.for_device)."""
        return cls(
            models,
            max_batch_size=settings.max_batch_size,
            max_batch_delay_s=settings.max_batch_delay_s,
            max_queue_tiles=settings.max_queue_tiles,
            batches_in_flight=settings.batches_in_flight,
            observer=observer,
            output_dtype=OUTPUT_DTYPE,  # the server stitches from 16-bit samples
        )

    @property
    def queued_tiles(self) -> int:
        """Tiles submitted and not yet taken into a batch."""
        return self._queued

    @property
    def batches_in_flight(self) -> int:
        """How many batches may be formed and not yet finished (see the module docstring)."""
        return self._in_flight_limit

    async def start(self) -> None:
        if self._worker is not None:
            raise RuntimeError("the batcher is already started")
        self._intake = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enhancer-model")
        if not np.issubdtype(self._output_dtype, np.floating):
            self._converter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="enhancer-outputs")
        self._worker = asyncio.create_task(self._run(), name="enhancer-batcher")

    async def stop(self, drain: bool = True) -> None:
        """Stop taking work. drain=True finishes everything queued first (wrap in a timeout if the
        model could hang); drain=False fails every unanswered request with BatcherClosedError."""
        if self._worker is None or self._stopped:
            return
        if not self._closing:
            self._closing = True
            self._intake.put_nowait(_STOP)
        if drain:
            await self._worker  # a caller's timeout cancels this; stop(drain=False) then ends it
        else:
            self._worker.cancel()
            for request in list(self._live):
                self._finish(request, error=BatcherClosedError("the server is shutting down"))
            await asyncio.gather(self._worker, return_exceptions=True)  # its CancelledError is expected
        self._stopped = True
        self._executor.shutdown(wait=drain, cancel_futures=True)
        if self._converter is not None:
            self._converter.shutdown(wait=drain, cancel_futures=True)

    async def submit(
        self, model: str, tiles: np.ndarray, inputs: Mapping[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, BatchTimings]:
        """Run every tile of one request ([T, h, w, C], samples of a type enhancer.samples knows)
        through `model`; outputs in tile order, as `output_dtype` samples.

        `inputs` are the request's extra model inputs, one float32 vector per name the model's
        spec declares (the same for every tile of the request).
        Raises QueueFullError at once when the queue has no room, BatchFailedError when the model
        failed on one of its batches, BatcherClosedError when not running. Cancelling the caller
        drops the request's queued tiles.
        """
        if self._worker is None or self._closing:
            raise BatcherClosedError("the model queue is not running")
        if tiles.ndim != 4 or len(tiles) == 0:
            raise ValueError(f"expected tiles shaped [T>=1, h, w, C], got an array of shape {tiles.shape}")
        vectors = self._check_inputs(model, inputs or {})
        count = len(tiles)
        if self._queued > 0 and self._queued + count > self._max_queue:
            raise QueueFullError(self._queued, count, self._max_queue, self._drain.rate())
        loop = asyncio.get_running_loop()
        request = _Request(
            model=model, tiles=tiles, count=count, inputs=vectors, future=loop.create_future(), submitted_at=loop.time()
        )
        del tiles  # the request holds them, and lets them go once all are in batches
        self._live.add(request)
        self._set_queued(self._queued + count)
        self._intake.put_nowait(request)
        try:
            return await request.future
        except asyncio.CancelledError:  # the caller went away: its queued tiles are not worth running
            dropped = self._drop_queued(request)
            if dropped:
                log.info("a request to model %s was cancelled: its %d queued tiles were dropped", model, dropped)
            raise
        finally:
            self._live.discard(request)

    def _check_inputs(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The request's extra inputs as float32 vectors, checked against the model's spec."""
        if model not in self._models:
            raise ValueError(f"unknown model {model!r}; the batcher serves {', '.join(self._models)}")
        declared = self._models[model].spec.inputs
        if set(inputs) != set(declared):
            raise ValueError(f"model {model!r} takes the extra inputs {sorted(declared)}, got {sorted(inputs)}")
        vectors = {name: np.asarray(inputs[name], dtype=np.float32) for name in declared}
        for name, vector in vectors.items():
            if vector.shape != (declared[name],):
                raise ValueError(f"extra input {name!r} must be a vector of length {declared[name]}, got shape {vector.shape}")
        return vectors

    # -- the worker -----------------------------------------------------------------------------

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self._in_flight_limit)  # one per batch formed and not yet finished
        running: set[asyncio.Task] = set()
        try:
            while True:
                self._admit_waiting()
                if not self._waiting:
                    if self._stop_seen:
                        break
                    self._admit(await self._intake.get())
                    continue
                await slots.acquire()
                self._admit_waiting()
                if not self._waiting:  # what was queued got cancelled while we waited for a slot
                    slots.release()
                    continue
                # The batch lives only in its task, so its requests' tiles (0.7 GB for a 48 MP image)
                # are freed when it finishes, not when the next batch comes along. Its slot is free
                # once the model has returned: converting and storing its outputs overlaps the next.
                slot = _Slot(slots)
                task = asyncio.create_task(self._run_batch_safely(await self._fill_batch(), slot.release))
                running.add(task)
                task.add_done_callback(running.discard)
                task.add_done_callback(lambda _, slot=slot: slot.release())
            if running:
                await asyncio.gather(*running)
        finally:
            for task in running:  # only when the worker itself is cancelled (stop without drain)
                task.cancel()

    async def _run_batch_safely(self, batch: list[tuple[_Request, int]], model_returned=lambda: None) -> None:
        try:
            await self._run_batch(batch, model_returned)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not leave requests hanging or kill the worker
            log.exception("batch bookkeeping failed")
            for request in {r for r, _ in batch}:
                self._finish(request, error=BatchFailedError("internal error while batching; see the server log"))

    def _admit(self, item: object) -> None:
        if item is _STOP:
            self._stop_seen = True
        elif not item.future.done():  # skip requests cancelled while waiting in the intake
            item.arrival, self._arrivals = self._arrivals, self._arrivals + 1
            item.tag = self._virtual_time
            self._waiting.append(item)

    def _admit_waiting(self) -> None:
        while not self._intake.empty():
            self._admit(self._intake.get_nowait())

    async def _fill_batch(self) -> list[tuple[_Request, int]]:
        """Tiles of the model and shape whose turn it is, until full or the batch's one deadline passes."""
        loop = asyncio.get_running_loop()
        key = min(self._waiting, key=_turn_order).key
        deadline = loop.time() + self._max_delay
        batch: list[tuple[_Request, int]] = []
        while True:
            self._take_fair_share(key, batch)
            if len(batch) >= self._max_batch or self._stop_seen:
                break
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                self._admit(await asyncio.wait_for(self._intake.get(), left))
            except TimeoutError:
                break
            self._admit_waiting()
        self._waiting = [r for r in self._waiting if r.remaining > 0]
        return batch

    def _take_fair_share(self, key: tuple, batch: list) -> None:
        """Add tiles of `key` to the batch, smallest tag first, each advancing its request's tag by
        the tile's cost and virtual time by the previous tile's cost shared among those waiting."""
        now = asyncio.get_running_loop().time()
        turn = [r for r in self._waiting if r.key == key and r.remaining > 0]
        taken = 0
        while turn and len(batch) < self._max_batch:
            request = min(turn, key=_turn_order)
            cost = self._costs.cost(request.model, request.tiles.shape[1:])
            self._virtual_time = max(self._virtual_time + self._advance, request.tag)
            self._advance = cost / sum(1 for r in self._waiting if r.remaining > 0)
            request.tag += cost
            batch.append((request, request.next_tile))
            request.next_tile += 1
            taken += 1
            if request.queue_s is None:
                request.queue_s = now - request.submitted_at
                self._observer.on_queue_wait(request.model, request.queue_s)
            if request.remaining == 0:
                turn.remove(request)
        if taken:
            self._set_queued(self._queued - taken)

    async def _run_batch(self, batch: list[tuple[_Request, int]], model_returned=lambda: None) -> None:
        """Run one batch and store its outputs; `model_returned` is called as soon as the model has
        returned (or failed), before the outputs are converted, so the next batch can start."""
        if not batch:
            return
        name = batch[0][0].model  # one model per batch (the batch key)
        live = [(r, i) for r, i in batch if not r.future.done()]
        if len(live) < len(batch):
            self._observer.on_tiles_dropped(name, len(batch) - len(live))
        if not live:
            return
        model = self._models[name]
        tiles = np.empty((len(live), *live[0][0].tiles.shape[1:]), np.float32)
        for k, (request, index) in enumerate(live):  # requests of one batch may differ in sample type
            to_unit_float(request.tiles[index], out=tiles[k])
            request.stacked += 1
        # row k of each extra input belongs to tile k (each request's vector, once per tile of it)
        extra = {key: np.stack([r.inputs[key] for r, _ in live]) for key in model.spec.inputs}
        requests = list(dict.fromkeys(r for r, _ in live))
        for request in requests:
            if request.stacked == request.count:  # every tile of it is in this batch or an earlier one
                request.let_go_of_tiles()
        try:
            loop = asyncio.get_running_loop()
            try:
                outputs, infer_s = await loop.run_in_executor(self._executor, _timed, model.forward, tiles, extra)
            finally:
                model_returned()
            n, h, w, c = tiles.shape
            scale = model.spec.scale
            if outputs.shape != (n, h * scale, w * scale, c):
                raise ValueError(
                    f"model {name!r} returned shape {outputs.shape} for a batch of shape {tiles.shape} (scale {scale})"
                )
            del tiles  # the float copy of the batch is not needed any more
            if self._converter is not None:
                outputs = await loop.run_in_executor(self._converter, from_unit_float, outputs, self._output_dtype)
        except Exception as exc:
            log.error("model %s: batch of %d tiles from %d requests failed: %r", name, len(live), len(requests), exc)
            self._observer.on_batch_failed(name, len(live), exc)
            for request in requests:
                error = BatchFailedError(f"the model raised {type(exc).__name__}: {exc}")
                error.__cause__ = exc
                self._finish(request, error=error)
            return
        self._drain.add(len(live), infer_s)  # model-thread time: a batch queued behind another is not slower
        self._costs.observe(name, len(live), live[0][0].tiles.shape[1:], infer_s)
        self._observer.on_batch(name, len(live), infer_s)
        for (request, index), output in zip(live, outputs):
            if request.outputs is None:
                request.outputs = np.empty((request.count, *output.shape), dtype=outputs.dtype)
            request.outputs[index] = output
            request.finished_tiles += 1
        for request in requests:
            request.infer_s += infer_s
            if request.finished_tiles == request.count:
                self._finish(request)

    # -- bookkeeping ----------------------------------------------------------------------------

    def _finish(self, request: _Request, error: BaseException | None = None) -> None:
        """Answer a request (result or error) and drop whatever of it is still queued."""
        self._drop_queued(request)
        if request.future.done():
            return
        if error is None:
            timings = BatchTimings(queue_s=request.queue_s or 0.0, infer_s=request.infer_s)
            request.future.set_result((request.outputs, timings))
        else:
            request.future.set_exception(error)

    def _drop_queued(self, request: _Request) -> int:
        """Forget the request's tiles not yet taken into a batch; how many there were."""
        dropped = request.remaining
        if dropped == 0:
            return 0
        request.next_tile = request.count
        if request in self._waiting:
            self._waiting.remove(request)
        self._set_queued(self._queued - dropped)
        self._observer.on_tiles_dropped(request.model, dropped)
        return dropped

    def _set_queued(self, tiles: int) -> None:
        self._queued = tiles
        self._observer.on_queue_depth(tiles)


def _turn_order(request: _Request) -> tuple[float, int]:
    return request.tag, request.arrival


def _timed(forward, tiles: np.ndarray, extra: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
    """Runs on the model thread, so the time excludes waiting for the thread."""
    started = time.perf_counter()
    outputs = forward(tiles, extra)
    return np.asarray(outputs), time.perf_counter() - started
