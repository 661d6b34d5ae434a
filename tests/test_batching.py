"""Micro-batcher behaviour with fake models that record which tiles each batch held.

Each tile is filled with request_id * 1000 + tile_index, so a batch's content tells exactly where
its tiles came from. The first batch can be held on a gate so that later submissions queue up
while the model is busy, which makes batch composition deterministic without timing guesses.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from helpers import until

from enhancer.batching import (
    BatcherClosedError,
    BatchFailedError,
    BatchObserver,
    MicroBatcher,
    QueueFullError,
    TileCosts,
)
from enhancer.models.contract import ModelSpec

A, B, C, D, E, F, H, S, Z = 1, 2, 3, 4, 5, 6, 7, 8, 9  # request ids
SMALL, LARGE = (2, 2, 1), (4, 4, 1)  # tile shapes (h, w, c)


def tiles(request_id: int, count: int, shape=SMALL, poison: tuple[int, ...] = ()) -> np.ndarray:
    out = np.empty((count, *shape), dtype=np.float32)
    for i in range(count):
        out[i] = -(request_id * 1000 + i) if i in poison else request_id * 1000 + i
    return out


def origin(tile: np.ndarray) -> tuple[int, int]:
    value = int(abs(tile.flat[0]))
    return value // 1000, value % 1000


M = "fake"  # the fake model's name, as requests name it


class FakeModel:
    """Keeps the model contract; records each batch's tile origins (and extra inputs); can hold
    its first batch until `gate` is set."""

    def __init__(self, *, gated: bool = False, seconds: float = 0.0, name: str = M, inputs=None, gate=None):
        self.spec = ModelSpec(name=name, reach=0, inputs=inputs or {})
        self.device, self.device_kind, self.precision = "fake", "cpu", "float32"
        self.batches: list[list[tuple[int, int]]] = []
        self.inputs: list[dict[str, np.ndarray]] = []
        self.shapes: list[tuple[int, ...]] = []
        self.threads: set[int] = set()
        self.gate = gate or threading.Event()
        if not gated:
            self.gate.set()
        self.seconds = seconds

    def forward(self, batch: np.ndarray, inputs=None) -> np.ndarray:
        self.threads.add(threading.get_ident())
        self.batches.append([origin(t) for t in batch])
        self.inputs.append({k: np.array(v) for k, v in (inputs or {}).items()})
        self.shapes.append(batch.shape[1:])
        if len(self.batches) == 1:
            assert self.gate.wait(10), "test never opened the gate"
        if (batch < 0).any():
            raise ValueError("poisoned tile")
        time.sleep(self.seconds)
        return batch + 0.5

    def warm_up(self, shapes, max_batch_size):
        return 0.0


class Recorder(BatchObserver):
    def __init__(self):
        self.batch_sizes: list[int] = []
        self.outcomes: list[tuple[str, str, int]] = []  # (model, "ok" | "failed", size)
        self.errors: list[BaseException] = []
        self.dropped = 0
        self.waits: list[float] = []
        self.depths: list[int] = []

    def on_batch(self, model: str, size: int, infer_s: float) -> None:
        self.batch_sizes.append(size)
        self.outcomes.append((model, "ok", size))

    def on_batch_failed(self, model: str, size: int, error: BaseException) -> None:
        self.outcomes.append((model, "failed", size))
        self.errors.append(error)

    def on_queue_wait(self, model: str, seconds: float) -> None:
        self.waits.append(seconds)

    def on_tiles_dropped(self, model: str, count: int) -> None:
        self.dropped += count

    def on_queue_depth(self, tiles: int) -> None:
        self.depths.append(tiles)


def run(scenario, timeout: float = 20.0):
    """Run an async scenario; a bug that hangs fails the test instead of the whole suite."""
    return asyncio.run(asyncio.wait_for(scenario(), timeout))


async def hold_model(batcher: MicroBatcher, model: FakeModel, count: int) -> asyncio.Task:
    """Submit a full batch of blocker tiles and wait until the model is stuck on it."""
    task = asyncio.create_task(batcher.submit(model.spec.name, tiles(Z, count)))
    await until(lambda: len(model.batches) == 1)
    return task


class PixelCosts(TileCosts):
    """Every tile costs its pixel count, whatever the model and however long it took: turn order
    without the timing noise (a gated batch would otherwise price the next tiles 1000x)."""

    def cost(self, model, tile_shape):
        return float(tile_shape[0] * tile_shape[1])

    def observe(self, model, tiles, tile_shape, seconds):
        pass


def make(*models, batch=4, delay=5.0, queue=1000, observer=None, in_flight=1, costs=None) -> MicroBatcher:
    return MicroBatcher(
        {model.spec.name: model for model in models}, max_batch_size=batch, max_batch_delay_s=delay,
        max_queue_tiles=queue, batches_in_flight=in_flight, observer=observer, costs=costs or PixelCosts(),
    )  # fmt: skip


def test_concurrent_requests_share_batches_round_robin_and_get_their_own_tiles_back():
    model = FakeModel(gated=True)

    async def scenario():
        batcher = make(model, batch=4)
        await batcher.start()
        blocker = await hold_model(batcher, model, 4)
        inputs = {A: tiles(A, 3), B: tiles(B, 2), C: tiles(C, 3)}
        tasks = {rid: asyncio.create_task(batcher.submit(M, x)) for rid, x in inputs.items()}
        await until(lambda: batcher.queued_tiles == 8)
        model.gate.set()
        results = {rid: await task for rid, task in tasks.items()}
        await blocker
        await batcher.stop()
        return inputs, results

    inputs, results = run(scenario)
    assert model.batches == [
        [(Z, 0), (Z, 1), (Z, 2), (Z, 3)],
        [(A, 0), (B, 0), (C, 0), (A, 1)],
        [(B, 1), (C, 1), (A, 2), (C, 2)],
    ]
    for rid, x in inputs.items():
        outputs, timings = results[rid]
        assert np.array_equal(outputs, x + 0.5)  # its own tiles, in order
        assert timings.queue_s >= 0 and timings.infer_s >= 0


def test_small_request_is_not_starved_by_a_huge_one():
    model = FakeModel(gated=True)

    async def scenario():
        batcher = make(model, batch=4, delay=0.05)
        await batcher.start()
        huge = asyncio.create_task(batcher.submit(M, tiles(H, 40)))
        await until(lambda: len(model.batches) == 1)  # the huge image's first batch is running
        small = asyncio.create_task(batcher.submit(M, tiles(S, 2)))
        await until(lambda: batcher.queued_tiles == 36 + 2)
        model.gate.set()
        await small
        small_done_first = not huge.done()
        await huge
        await batcher.stop()
        return small_done_first

    assert run(scenario)
    # the newcomer's tag is where the running batch started, so it goes before the huge one's next tile
    assert model.batches[1] == [(S, 0), (H, 4), (S, 1), (H, 5)]
    assert len(model.batches) == 11  # 42 tiles, 4 per batch


def test_a_newcomer_runs_right_after_the_tile_in_progress():
    """One tile per batch (the CPU default): a small request that arrives while a big one's tile
    runs is next, not after another of the big one's tiles."""
    model = FakeModel(gated=True)

    async def scenario():
        batcher = make(model, batch=1, delay=0.0)
        await batcher.start()
        big = asyncio.create_task(batcher.submit(M, tiles(H, 6, LARGE)))
        await until(lambda: len(model.batches) == 1)
        small = asyncio.create_task(batcher.submit(M, tiles(S, 1)))
        await until(lambda: batcher.queued_tiles == 5 + 1)
        model.gate.set()
        await asyncio.gather(big, small)
        await batcher.stop()

    run(scenario)
    assert model.batches[:3] == [[(H, 0)], [(S, 0)], [(H, 1)]]


def test_model_time_is_shared_by_cost_not_by_tiles():
    """A tile four times dearer is dealt a quarter as often while both requests wait, so the cheap
    request gets as much model time as the dear one, not a quarter of it."""
    model = FakeModel(gated=True)

    async def scenario():
        batcher = make(model, batch=1, delay=0.0)
        await batcher.start()
        blocker = await hold_model(batcher, model, 1)
        dear = asyncio.create_task(batcher.submit(M, tiles(B, 3, LARGE)))  # 16 px tiles
        cheap = asyncio.create_task(batcher.submit(M, tiles(A, 12, SMALL)))  # 4 px tiles
        await until(lambda: batcher.queued_tiles == 15)
        model.gate.set()
        await asyncio.gather(blocker, dear, cheap)
        await batcher.stop()

    run(scenario)
    order = "".join("B" if batch[0][0] == B else "a" for batch in model.batches[1:])
    assert order == "Baaaa" "Baaaa" "Baaaa"


def test_tile_costs_follow_each_models_measured_time_per_pixel():
    costs = TileCosts()
    assert costs.cost("restore", (100, 100)) == pytest.approx(100 * 100 * 1e-6)  # the prior, 1 MP/s
    costs.observe("restore", tiles=2, tile_shape=(100, 100), seconds=0.02)  # 1 us per pixel
    costs.observe("upscale", tiles=1, tile_shape=(100, 100), seconds=0.05)  # 5 us per pixel
    assert costs.cost("restore", (200, 100)) == pytest.approx(0.02)
    assert costs.cost("upscale", (100, 100)) == pytest.approx(0.05)
    assert costs.cost("untimed", (100, 100)) == pytest.approx(0.05)  # priced like the dearest timed
    costs.observe("upscale", tiles=1, tile_shape=(100, 100), seconds=0.10)  # slower now: moves a fifth
    assert costs.cost("upscale", (100, 100)) == pytest.approx(0.05 + 0.2 * 0.05)
    costs.observe("restore", tiles=1, tile_shape=(10, 10), seconds=0.0)  # a timer of coarse grain
    assert costs.cost("restore", (10, 10)) > 0


def test_a_batch_holds_one_shape_and_shapes_take_turns():
    model = FakeModel(gated=True)

    async def scenario():
        batcher = make(model, batch=4, delay=0.02)
        await batcher.start()
        blocker = await hold_model(batcher, model, 4)
        small_a = asyncio.create_task(batcher.submit(M, tiles(A, 3, SMALL)))
        large_b = asyncio.create_task(batcher.submit(M, tiles(B, 3, LARGE)))
        small_c = asyncio.create_task(batcher.submit(M, tiles(C, 2, SMALL)))
        await until(lambda: batcher.queued_tiles == 8)
        model.gate.set()
        await asyncio.gather(blocker, small_a, large_b, small_c)
        await batcher.stop()

    run(scenario)
    assert model.batches[1:] == [
        [(A, 0), (C, 0), (A, 1), (C, 1)],
        [(B, 0), (B, 1), (B, 2)],  # the other shape's turn comes before A's last tile
        [(A, 2)],
    ]
    assert model.shapes[1:] == [SMALL, LARGE, SMALL]


def test_lone_tile_waits_for_the_deadline_then_runs():
    model = FakeModel()
    delay = 0.1

    async def scenario():
        batcher = make(model, batch=8, delay=delay)
        await batcher.start()
        started = time.perf_counter()
        await batcher.submit(M, tiles(A, 1))
        elapsed = time.perf_counter() - started
        await batcher.stop()
        return elapsed

    elapsed = run(scenario)
    assert elapsed >= delay * 0.9  # it waited for company ...
    assert elapsed < 5 * delay + 1.0  # ... but not forever


def test_full_batch_does_not_wait_for_the_deadline():
    model = FakeModel()

    async def scenario():
        batcher = make(model, batch=4, delay=60.0)
        await batcher.start()
        outputs, _ = await asyncio.wait_for(batcher.submit(M, tiles(A, 4)), 10.0)
        await batcher.stop()
        return outputs

    assert len(run(scenario)) == 4
    assert model.batches == [[(A, 0), (A, 1), (A, 2), (A, 3)]]


def test_one_deadline_per_batch_not_one_window_per_wait():
    """Tiles trickling in faster than the window must not keep one batch open indefinitely."""
    model = FakeModel()
    delay = 0.2

    async def scenario():
        batcher = make(model, batch=100, delay=delay)
        await batcher.start()
        tasks = []
        for i in range(8):  # one single-tile request every 0.4 windows
            tasks.append(asyncio.create_task(batcher.submit(M, tiles(10 + i, 1))))
            await asyncio.sleep(delay * 0.4)
        await asyncio.gather(*tasks)
        await batcher.stop()

    run(scenario)
    # First tile at t=0, the batch closes at t=delay: tiles from t=0, 0.4, 0.8 windows at most.
    assert 1 <= len(model.batches[0]) <= 3
    assert sum(len(b) for b in model.batches) == 8


def test_cancelled_request_tiles_are_dropped_before_the_model_sees_them():
    model = FakeModel(gated=True)
    observer = Recorder()

    async def scenario():
        batcher = make(model, batch=4, delay=0.02, observer=observer)
        await batcher.start()
        blocker = await hold_model(batcher, model, 4)
        gone = asyncio.create_task(batcher.submit(M, tiles(A, 5)))
        kept = asyncio.create_task(batcher.submit(M, tiles(B, 1)))
        await until(lambda: batcher.queued_tiles == 6)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        queued_after_cancel = batcher.queued_tiles
        model.gate.set()
        await asyncio.gather(blocker, kept)
        await batcher.stop()
        return queued_after_cancel

    assert run(scenario) == 1
    assert all(rid != A for batch in model.batches for rid, _ in batch)
    assert model.batches[1:] == [[(B, 0)]]
    assert observer.dropped == 5


def test_timed_out_request_picked_for_a_filling_batch_is_filtered_out():
    """Tiles already taken into a batch that is still waiting for its deadline are dropped too."""
    model = FakeModel()
    observer = Recorder()

    async def scenario():
        batcher = make(model, batch=8, delay=0.3, observer=observer)
        await batcher.start()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.submit(M, tiles(A, 2)), 0.05)
        outputs, _ = await batcher.submit(M, tiles(B, 1))
        await batcher.stop()
        return outputs

    assert np.array_equal(run(scenario), tiles(B, 1) + 0.5)
    assert all(rid != A for batch in model.batches for rid, _ in batch)
    assert observer.dropped == 2


def test_failed_batch_fails_only_its_requests_and_the_worker_goes_on():
    model = FakeModel(gated=True)
    observer = Recorder()

    async def scenario():
        batcher = make(model, batch=2, delay=0.02, observer=observer)
        await batcher.start()
        blocker = await hold_model(batcher, model, 2)
        poisoned = asyncio.create_task(batcher.submit(M, tiles(D, 3, poison=(0,))))
        neighbour = asyncio.create_task(batcher.submit(M, tiles(E, 1)))  # shares D's batch
        bystander = asyncio.create_task(batcher.submit(M, tiles(F, 1)))  # does not
        await until(lambda: batcher.queued_tiles == 5)
        model.gate.set()
        await blocker
        errors = []
        for task in (poisoned, neighbour):
            with pytest.raises(BatchFailedError) as info:
                await task
            errors.append(info.value)
        outputs, _ = await bystander
        await batcher.stop()
        return errors, outputs

    errors, outputs = run(scenario)
    assert model.batches[1:] == [[(D, 0), (E, 0)], [(F, 0)]]  # D's other tiles never ran
    for error in errors:
        assert isinstance(error.__cause__, ValueError) and "poisoned tile" in str(error)
    assert np.array_equal(outputs, tiles(F, 1) + 0.5)
    assert observer.outcomes == [(M, "ok", 2), (M, "failed", 2), (M, "ok", 1)]  # the last batch succeeded
    assert observer.dropped == 2
    assert observer.batch_sizes == [2, 1]  # only successful batches count as run


def test_every_batch_outcome_is_reported_to_the_observer():
    model = FakeModel()
    observer = Recorder()

    async def scenario():
        batcher = make(model, batch=1, delay=0.0, observer=observer)
        await batcher.start()
        with pytest.raises(BatchFailedError):
            await batcher.submit(M, tiles(A, 1, poison=(0,)))
        outcomes = list(observer.outcomes)
        await batcher.submit(M, tiles(B, 1))
        await batcher.stop()
        return outcomes

    assert run(scenario) == [(M, "failed", 1)]
    assert observer.outcomes == [(M, "failed", 1), (M, "ok", 1)]
    assert isinstance(observer.errors[0], ValueError) and "poisoned tile" in str(observer.errors[0])


class Shrinking(FakeModel):
    """Returns tiles one row short: not what the contract promises."""

    def forward(self, batch, inputs=None):
        return batch[:, :1]


def test_model_returning_the_wrong_shape_fails_the_batch_clearly():
    async def scenario():
        batcher = make(Shrinking(), batch=1, delay=0.0)
        await batcher.start()
        with pytest.raises(BatchFailedError, match="shape"):
            await batcher.submit(M, tiles(A, 1))
        await batcher.stop()

    run(scenario)


def test_full_queue_rejects_at_once_with_retry_information():
    model = FakeModel(gated=True)

    async def scenario():
        batcher = make(model, batch=2, delay=0.01, queue=4)
        await batcher.start()
        blocker = await hold_model(batcher, model, 2)  # in the model, no longer queued
        waiting = asyncio.create_task(batcher.submit(M, tiles(A, 3)))
        await until(lambda: batcher.queued_tiles == 3)
        with pytest.raises(QueueFullError) as info:
            await asyncio.wait_for(batcher.submit(M, tiles(B, 2)), 1.0)
        first = info.value
        model.gate.set()
        await asyncio.gather(blocker, waiting)
        await batcher.stop()
        return first

    error = run(scenario)
    assert error.queued_tiles == 3 and error.requested_tiles == 2 and error.max_queue_tiles == 4
    assert error.retry_after_s > 0
    assert "limit 4" in str(error)
    assert all(rid != B for batch in model.batches for rid, _ in batch)


def test_retry_after_uses_the_measured_drain_rate():
    model = FakeModel(gated=True, seconds=0.01)

    async def scenario():
        batcher = make(model, batch=2, delay=0.0, queue=4)
        await batcher.start()
        model.gate.set()
        await batcher.submit(M, tiles(A, 4))  # two batches of 2 tiles, ~0.01 s each
        model.gate.clear()
        model.batches.clear()  # gate the next batch again
        blocker = await hold_model(batcher, model, 2)
        waiting = asyncio.create_task(batcher.submit(M, tiles(B, 4)))
        await until(lambda: batcher.queued_tiles == 4)
        with pytest.raises(QueueFullError) as info:
            await batcher.submit(M, tiles(C, 3))
        model.gate.set()
        await asyncio.gather(blocker, waiting)
        await batcher.stop()
        return info.value

    error = run(scenario)
    assert error.drain_rate is not None and error.drain_rate > 0
    assert error.retry_after_s == pytest.approx(3 / error.drain_rate)  # 3 tiles too many


def test_request_larger_than_the_queue_runs_when_the_queue_is_empty():
    model = FakeModel(gated=True)

    async def scenario():
        batcher = make(model, batch=4, delay=0.01, queue=4)
        await batcher.start()
        huge = asyncio.create_task(batcher.submit(M, tiles(H, 10)))
        await until(lambda: len(model.batches) == 1)
        assert batcher.queued_tiles == 6
        with pytest.raises(QueueFullError):  # everyone else waits while it drains
            await batcher.submit(M, tiles(S, 1))
        model.gate.set()
        outputs, _ = await huge
        await batcher.stop()
        return outputs

    assert np.array_equal(run(scenario), tiles(H, 10) + 0.5)


def test_stop_with_drain_finishes_queued_work_then_refuses_more():
    model = FakeModel(gated=True)

    async def scenario():
        batcher = make(model, batch=4, delay=30.0)
        await batcher.start()
        blocker = await hold_model(batcher, model, 4)
        queued = [asyncio.create_task(batcher.submit(M, tiles(rid, 3))) for rid in (A, B)]
        await until(lambda: batcher.queued_tiles == 6)
        stopping = asyncio.create_task(batcher.stop(drain=True))
        await asyncio.sleep(0.01)
        with pytest.raises(BatcherClosedError):
            await batcher.submit(M, tiles(C, 1))
        model.gate.set()
        # The last, half-full batch runs at once instead of waiting 30 s for company that
        # cannot come any more.
        await asyncio.wait_for(stopping, 10.0)
        return [task.result() for task in [blocker, *queued]]

    results = run(scenario)
    assert [len(outputs) for outputs, _ in results] == [4, 3, 3]
    assert model.batches[1:] == [[(A, 0), (B, 0), (A, 1), (B, 1)], [(A, 2), (B, 2)]]


def test_stop_without_drain_fails_waiting_requests():
    model = FakeModel(gated=True)

    async def scenario():
        batcher = make(model, batch=2, delay=5.0)
        await batcher.start()
        blocker = await hold_model(batcher, model, 2)
        queued = asyncio.create_task(batcher.submit(M, tiles(A, 3)))
        await until(lambda: batcher.queued_tiles == 3)
        try:
            await batcher.stop(drain=False)
        finally:
            model.gate.set()
        for task in (blocker, queued):
            with pytest.raises(BatcherClosedError):
                await task

    run(scenario)
    assert len(model.batches) == 1


def test_model_runs_on_one_thread_off_the_event_loop():
    model = FakeModel(seconds=0.01)

    async def scenario():
        batcher = make(model, batch=2, delay=0.0)
        await batcher.start()
        await asyncio.gather(*(batcher.submit(M, tiles(rid, 3)) for rid in (A, B, C)))
        await batcher.stop()
        return threading.get_ident()

    loop_thread = run(scenario)
    assert len(model.threads) == 1 and loop_thread not in model.threads


def test_timings_and_observer_account_for_every_tile():
    model = FakeModel(seconds=0.02)
    observer = Recorder()

    async def scenario():
        batcher = make(model, batch=2, delay=0.0, observer=observer)
        await batcher.start()
        result = await batcher.submit(M, tiles(A, 3))  # two batches
        await batcher.stop()
        return result

    _, timings = run(scenario)
    assert timings.infer_s >= 2 * 0.02
    assert timings.queue_s >= 0
    assert observer.batch_sizes == [2, 1]
    assert len(observer.waits) == 1
    assert observer.depths[0] == 3 and observer.depths[-1] == 0


def test_submit_checks_its_input_and_that_the_batcher_runs():
    async def scenario():
        batcher = make(FakeModel())
        with pytest.raises(BatcherClosedError):
            await batcher.submit(M, tiles(A, 1))
        await batcher.start()
        with pytest.raises(ValueError):
            await batcher.submit(M, np.zeros((0, 2, 2, 1), np.float32))
        with pytest.raises(ValueError):
            await batcher.submit(M, np.zeros((2, 2, 1), np.float32))
        await batcher.stop()

    run(scenario)


@pytest.mark.parametrize("in_flight", [1, 2])
def test_with_two_batches_in_flight_the_next_one_is_formed_while_the_model_is_busy(in_flight):
    model = FakeModel(gated=True)

    async def scenario():
        batcher = make(model, batch=2, delay=0.0, in_flight=in_flight)
        await batcher.start()
        blocker = await hold_model(batcher, model, 2)
        queued = asyncio.create_task(batcher.submit(M, tiles(A, 3)))
        if in_flight == 2:  # A's first two tiles are taken into the next batch while the model is held
            await until(lambda: batcher.queued_tiles == 1)
        else:
            await until(lambda: batcher.queued_tiles == 3)
            await asyncio.sleep(0.1)
            assert batcher.queued_tiles == 3  # nothing is taken while the model is busy
        late = asyncio.create_task(batcher.submit(M, tiles(B, 1)))
        await until(lambda: batcher.queued_tiles == (2 if in_flight == 2 else 4))
        model.gate.set()
        results = await asyncio.gather(blocker, queued, late)
        await batcher.stop()
        return results

    results = run(scenario)
    # With one batch in flight the newcomer B joins the very next batch; with two it waits one more.
    expected = {1: [[(A, 0), (B, 0)], [(A, 1), (A, 2)]], 2: [[(A, 0), (A, 1)], [(A, 2), (B, 0)]]}
    assert model.batches[1:] == expected[in_flight]
    for (outputs, _), rid, count in zip(results, (Z, A, B), (2, 3, 1), strict=True):
        assert np.array_equal(outputs, tiles(rid, count) + 0.5)


def test_two_batches_in_flight_answer_every_request_and_fail_only_the_poisoned_ones():
    model = FakeModel(seconds=0.002)
    observer = Recorder()

    async def scenario():
        batcher = make(model, batch=3, delay=0.001, in_flight=2, observer=observer)
        await batcher.start()
        inputs = {rid: tiles(rid, 2 + rid % 4, SMALL if rid % 2 else LARGE) for rid in range(1, 25)}
        inputs[7] = tiles(7, 4, SMALL, poison=(2,))
        tasks = {rid: asyncio.create_task(batcher.submit(M, x)) for rid, x in inputs.items()}
        results = {}
        for rid, task in tasks.items():
            try:
                results[rid] = (await task)[0]
            except BatchFailedError as error:
                results[rid] = error
        await batcher.stop()
        return inputs, results

    inputs, results = run(scenario)
    failed = {rid for rid, r in results.items() if isinstance(r, BatchFailedError)}
    poisoned_batch = next(b for b in model.batches if (7, 2) in b)
    assert failed == {rid for rid, _ in poisoned_batch}  # the poisoned batch's requests, nobody else
    for rid, result in results.items():
        if rid not in failed:
            assert np.array_equal(result, inputs[rid] + 0.5)
    # every tile either ran in a successful batch, ran in the failed one, or was dropped with its request
    assert sum(observer.batch_sizes) + len(poisoned_batch) + observer.dropped == sum(len(x) for x in inputs.values())
    assert len(model.threads) == 1


def test_stop_without_drain_with_two_batches_in_flight_answers_everyone():
    model = FakeModel(gated=True)

    async def scenario():
        batcher = make(model, batch=2, delay=0.0, in_flight=2)
        await batcher.start()
        blocker = await hold_model(batcher, model, 2)
        second = asyncio.create_task(batcher.submit(M, tiles(A, 2)))  # formed, waiting for the model thread
        waiting = asyncio.create_task(batcher.submit(M, tiles(B, 2)))  # still queued
        await until(lambda: batcher.queued_tiles == 2)
        try:
            await batcher.stop(drain=False)
        finally:
            model.gate.set()
        for task in (blocker, second, waiting):
            with pytest.raises(BatcherClosedError):
                await task

    run(scenario)


# --- several models, extra inputs ----------------------------------------------------------------


def test_batches_never_mix_models_and_a_huge_request_on_one_does_not_starve_the_other():
    gate = threading.Event()
    order: list[str] = []  # the model of every batch, in the order they ran (one model thread)

    class Logged(FakeModel):
        def forward(self, batch, inputs=None):
            order.append(self.spec.name)
            return super().forward(batch, inputs)

    big_model, small_model = Logged(gated=True, name="big", gate=gate), Logged(gated=True, name="small", gate=gate)

    async def scenario():
        batcher = make(big_model, small_model, batch=4, delay=0.05)
        await batcher.start()
        blocker = await hold_model(batcher, big_model, 4)
        huge = asyncio.create_task(batcher.submit("big", tiles(H, 40)))
        # same tile shape as the huge request's: only the model tells their tiles apart
        small = asyncio.create_task(batcher.submit("small", tiles(S, 2)))
        other = asyncio.create_task(batcher.submit("small", tiles(A, 1)))
        await until(lambda: batcher.queued_tiles == 43)
        gate.set()
        await asyncio.gather(small, other, blocker, huge)
        await batcher.stop()
        return (await small)[0], (await huge)[0]

    small_out, huge_out = run(scenario)
    # batches that ran on the model before the small one (the next big batch may start while the
    # small batch's outputs are stored: the model does not wait for that)
    big_before = order.index("small")
    assert all(rid in (Z, H) for batch in big_model.batches for rid, _ in batch)
    assert all(rid in (S, A) for batch in small_model.batches for rid, _ in batch)
    assert small_model.batches == [[(S, 0), (A, 0), (S, 1)]]  # the small requests shared one batch
    assert big_before <= 2  # the blocker and at most one batch of the huge request ran first
    assert order.count("big") == 1 + 10  # the huge request's 40 tiles in batches of 4
    assert np.array_equal(small_out, tiles(S, 2) + 0.5) and np.array_equal(huge_out, tiles(H, 40) + 0.5)


def test_extra_inputs_reach_the_model_row_by_row_in_a_mixed_batch():
    model = FakeModel(gated=True, inputs={"quantization": 3})
    vectors = {rid: np.array([rid, rid * 10, -rid], np.float32) for rid in (Z, A, B, C)}

    async def scenario():
        batcher = make(model, batch=4)
        await batcher.start()
        blocker = asyncio.create_task(batcher.submit(M, tiles(Z, 4), {"quantization": vectors[Z]}))
        await until(lambda: len(model.batches) == 1)
        counts = {A: 3, B: 2, C: 3}
        tasks = [asyncio.create_task(batcher.submit(M, tiles(rid, n), {"quantization": vectors[rid]})) for rid, n in counts.items()]
        await until(lambda: batcher.queued_tiles == 8)
        model.gate.set()
        await asyncio.gather(blocker, *tasks)
        await batcher.stop()

    run(scenario)
    assert len(model.batches) == 3 and any(len({rid for rid, _ in b}) > 1 for b in model.batches)  # mixed batches
    for batch, inputs in zip(model.batches, model.inputs, strict=True):
        rows = inputs["quantization"]
        assert rows.shape == (len(batch), 3) and rows.dtype == np.float32
        for k, (rid, _) in enumerate(batch):
            assert np.array_equal(rows[k], vectors[rid])  # row k belongs to tile k's request


def test_submit_checks_the_model_name_and_its_extra_inputs():
    model = FakeModel(inputs={"quantization": 3})

    async def scenario():
        batcher = make(model)
        await batcher.start()
        with pytest.raises(ValueError, match="unknown model 'other'; the batcher serves fake"):
            await batcher.submit("other", tiles(A, 1), {"quantization": np.zeros(3)})
        with pytest.raises(ValueError, match=r"takes the extra inputs \['quantization'\], got \[\]"):
            await batcher.submit(M, tiles(A, 1))
        with pytest.raises(ValueError, match="length 3"):
            await batcher.submit(M, tiles(A, 1), {"quantization": np.zeros(4)})
        assert batcher.queued_tiles == 0
        await batcher.stop()

    run(scenario)
    assert model.batches == []


def test_integer_tiles_reach_the_model_as_float32_and_outputs_can_be_kept_as_16_bit_samples():
    """The server's batcher: tiles wait as the bytes they were decoded in, a batch becomes float32
    [0, 1] when stacked (requests of one batch may differ in sample type), and outputs are stored
    as 16-bit samples, converted off the model thread."""
    seen: list[tuple[np.dtype, float, float]] = []
    threads: set[str] = set()

    class Halving:
        spec = ModelSpec(name=M, reach=0)

        def forward(self, batch, inputs=None):
            seen.append((batch.dtype, float(batch.min()), float(batch.max())))
            threads.add(threading.current_thread().name)
            return batch / 2

    async def scenario():
        batcher = MicroBatcher({M: Halving()}, max_batch_size=4, max_batch_delay_s=0.05, max_queue_tiles=100, output_dtype=np.uint16)
        await batcher.start()
        try:
            eight = np.full((2, 2, 2, 3), 255, np.uint8)
            sixteen = np.full((2, 2, 2, 3), 65535, np.uint16)
            (out8, _), (out16, _) = await asyncio.gather(batcher.submit(M, eight), batcher.submit(M, sixteen))
        finally:
            await batcher.stop()
        return out8, out16

    out8, out16 = asyncio.run(scenario())
    assert all(dtype == np.float32 and top == 1.0 for dtype, _, top in seen)  # both read as white
    assert len(seen) == 1  # one batch held both requests' tiles
    assert out8.dtype == out16.dtype == np.uint16
    assert (out8 == 32768).all() and (out16 == 32768).all()  # 0.5, rounded half up
    assert threads == {"enhancer-model_0"}


def test_the_next_batch_runs_while_the_last_ones_outputs_are_converted(monkeypatch):
    """With one batch in flight (the CPU default) a batch stops counting once the model has
    returned: converting its outputs to 16-bit samples overlaps the next batch on the model."""
    import enhancer.batching as batching

    events: list[tuple[str, float]] = []
    convert = batching.from_unit_float

    def slow_convert(values, dtype, out=None):
        events.append(("convert start", time.perf_counter()))
        time.sleep(0.3)
        result = convert(values, dtype, out=out)
        events.append(("convert end", time.perf_counter()))
        return result

    monkeypatch.setattr(batching, "from_unit_float", slow_convert)

    class Recording:
        spec = ModelSpec(name=M, reach=0)

        def forward(self, batch, inputs=None):
            events.append(("forward", time.perf_counter()))
            return batch / 2

    async def scenario():
        batcher = MicroBatcher({M: Recording()}, max_batch_size=1, max_batch_delay_s=0.0, max_queue_tiles=100,
                               output_dtype=np.uint16)  # fmt: skip
        await batcher.start()
        try:
            return await batcher.submit(M, np.full((2, 2, 2, 3), 255, np.uint8))
        finally:
            await batcher.stop()

    outputs, _ = asyncio.run(scenario())
    assert (outputs == 32768).all() and outputs.dtype == np.uint16  # both tiles answered, in order
    forwards = [t for name, t in events if name == "forward"]
    first_conversion_end = next(t for name, t in events if name == "convert end")
    assert len(forwards) == 2 and forwards[1] < first_conversion_end


def test_a_requests_tiles_are_let_go_once_all_are_in_batches():
    """The batcher frees an image's input tiles as soon as its last tile has been stacked into a
    batch, before that batch runs (a lone large image's last tile is when its memory peaks); the
    answer is still every tile, in order."""
    import gc
    import weakref

    seen_alive: list[bool] = []

    class Watching(FakeModel):
        def forward(self, batch, inputs=None):
            seen_alive.append(tiles_alive() is not None)
            return super().forward(batch, inputs)

    model = Watching()
    request_tiles = tiles(A, 5)
    tiles_alive = weakref.ref(request_tiles)

    async def scenario():
        batcher = make(model, batch=2, delay=0.0, in_flight=1)  # the next batch is stacked after the model returns
        await batcher.start()
        try:
            nonlocal request_tiles
            submitted = batcher.submit(M, request_tiles, None)
            del request_tiles  # as the service does: only the batcher holds them
            return await submitted
        finally:
            await batcher.stop()

    outputs, _ = run(scenario)
    gc.collect()
    assert np.array_equal(outputs, tiles(A, 5) + 0.5)
    assert seen_alive[:2] == [True, True]  # batches of tiles 0-1 and 2-3 ran while tile 4 still waited
    assert seen_alive[2] is False  # the last batch ran after the tiles were let go
