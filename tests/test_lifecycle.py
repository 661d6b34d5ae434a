"""The serving state: one value, every transition in `Lifecycle`, and what readiness reads from it."""

from __future__ import annotations

import logging

from enhancer.runtime import FAILED_BATCHES_UNREADY, Lifecycle, ServingState


def test_start_up_goes_starting_warming_ready_and_logs_each_step(caplog):
    life = Lifecycle()
    assert (life.state, life.ready) == (ServingState.STARTING, False)
    life.warmed("too early")  # warming has not begun: nothing happens
    assert life.state is ServingState.STARTING
    with caplog.at_level(logging.INFO, logger="enhancer.runtime"):
        life.loaded("2 models loaded")
        assert (life.state, life.ready) == (ServingState.WARMING, False)
        life.warmed("serving a, b")
    assert (life.state, life.ready) == (ServingState.READY, True)
    assert [r.getMessage() for r in caplog.records] == [
        "state starting -> warming: 2 models loaded",
        "state warming -> ready: serving a, b",
    ]


def test_failed_batches_degrade_then_make_it_unready_and_one_success_recovers():
    life = Lifecycle()
    life.loaded("x")
    life.warmed("x")
    for failures in range(1, FAILED_BATCHES_UNREADY + 1):
        life.on_batch_failed("dejpeg", 1, RuntimeError("out of memory"))
        assert life.state is ServingState.DEGRADED and life.failed_in_a_row == failures
        assert life.ready is (failures < FAILED_BATCHES_UNREADY)  # still takes traffic for a while
    assert life.models_failing and life.last_batch_error == "RuntimeError: out of memory"
    assert life.last_failed_model == "dejpeg"
    life.on_batch("dejpeg", 1, 0.1)
    assert (life.state, life.ready, life.failed_in_a_row) == (ServingState.READY, True, 0)


def test_draining_and_failure_are_final():
    life = Lifecycle()
    life.loaded("x")
    life.fail("warm-up failed: no memory")
    assert (life.state, life.failure, life.ready) == (ServingState.FAILED, "warm-up failed: no memory", False)
    life.warmed("late")
    life.drain("SIGTERM")  # a failed server stays failed (health stays 503) while it shuts down
    assert life.state is ServingState.FAILED

    life = Lifecycle()
    life.loaded("x")
    life.warmed("x")
    life.drain("SIGTERM")
    for event in (lambda: life.on_batch_failed("m", 1, RuntimeError("x")), lambda: life.on_batch("m", 1, 0.1)):
        event()
        assert (life.state, life.ready) == (ServingState.DRAINING, False)
    life.fail("late failure")
    assert life.state is ServingState.DRAINING
