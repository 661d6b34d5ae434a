"""The benchmark harness's own logic (benchmarks/), and the simulated device behind the real app.

Nothing here is timed: the benchmarks measure, these tests check that what they compute from
their measurements is computed right, and that the simulated-device setup really exercises the
batcher (tiles of different requests share batches, answers are exact).
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from helpers import decode_bytes, encode_bgr, make_settings, photo_like, running_app, serving, until

from benchmarks.drivers import efficiency as bench_efficiency
from benchmarks.harness.common import metric_delta, parse_prometheus, percentiles
from benchmarks.harness.loadgen import Sample, _stable, parse_server_timing, summarize
from benchmarks.baselines.simulated import SimulatedDevice, ceiling_ratio

from enhancer import tiling
from enhancer.api import create_app


def test_server_timing_header_is_parsed_to_seconds():
    header = "decode;dur=1.5, tile;dur=20.0, queue;dur=0.1, infer;dur=300.0, encode;dur=12.5"
    assert parse_server_timing(header) == pytest.approx(
        {"decode": 0.0015, "tile": 0.02, "queue": 0.0001, "infer": 0.3, "encode": 0.0125}
    )
    assert parse_server_timing(None) == {}
    assert parse_server_timing("junk, infer;desc=x;dur=2") == {"infer": 0.002}


def test_stability_rule_is_plus_minus_ten_percent_of_the_mean():
    def w(rps, lat):
        return {"req_per_s": rps, "latency_mean_s": lat}

    assert _stable([w(10, 1.0), w(10.9, 1.05), w(9.5, 0.95)], 0.10)
    assert not _stable([w(10, 1.0), w(10, 1.0), w(13, 1.0)], 0.10)  # throughput off by > 10 %
    assert not _stable([w(10, 1.0), w(10, 1.0), w(10, 1.4)], 0.10)  # latency off by > 10 %
    assert not _stable([w(0, None), w(0, None), w(0, None)], 0.10)  # nothing completed


def test_summary_counts_errors_and_uses_only_successes_for_latency():
    samples = [Sample(0.0, 1.0, 200, 0.25, {"infer": 0.5}), Sample(0.0, 3.0, 200, 0.25, {"infer": 1.5}),
               Sample(0.0, 0.1, 503, 0.25), Sample(0.0, 0.2, 0, 0.25, error="ConnectError")]
    s = summarize(samples, duration=2.0)
    assert s["ok"] == 2 and s["errors"] == {"503": 1, "ConnectError": 1}
    assert s["req_per_s"] == 1.0 and s["mp_per_s"] == 0.25
    assert s["p50_s"] == 2.0 and s["latency_max_s"] == 3.0
    assert s["server_timing_mean_s"] == {"infer": 1.0}
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None}


def test_efficiency_summary_compares_the_pinned_server_the_raw_model_and_the_default_server():
    def level(concurrency, req_per_s, p50_s, batch):
        return {"concurrency": concurrency, "req_per_s": req_per_s, "mp_per_s": req_per_s * 0.262, "p50_s": p50_s,
                "p99_s": 2 * p50_s, "server_timing_mean_s": {},
                "server_metrics": {"mean_batch_size": batch, "model_busy_fraction": 0.99, "mean_batch_infer_s": 0.3}}  # fmt: skip

    def raw(mp_per_s):
        return {"batches": [{"batch_size": b, "mp_per_s": mp_per_s, "batch_s_median": 0.3, "tiles_per_s": 12.0} for b in (1, 2, 4)]}

    result = {
        "sweep": [level(1, 2.0, 0.4, 4.0), level(8, 3.0, 2.6, 4.0)],
        "raw_before": raw(0.7), "raw_after": raw(0.9),
        "prototype": [level(1, 2.5, 0.35, 1.0), level(8, 2.0, 3.0, 1.0)],
        "defaults": [level(1, 4.5, 0.2, 1.0), level(8, 4.8, 1.5, 1.0)],
    }  # fmt: skip
    s = bench_efficiency.summarize(result)
    assert s["raw_batch_size"] == 4 and s["raw_mp_per_s"] == pytest.approx(0.8)
    assert s["efficiency"] == pytest.approx(3.0 * 0.262 / 0.8)
    assert s["speedup_vs_prototype"] == pytest.approx(1.5)
    assert s["defaults_speedup_c8"] == pytest.approx(1.6)  # 4.8 / 3.0 req/s at concurrency 8
    assert s["defaults_p50_ratio_c1"] == pytest.approx(0.5)  # 0.2 / 0.4 s alone
    assert s["defaults_mean_batch_size_c8"] == 1.0


def test_prometheus_text_is_parsed_and_differenced():
    before = parse_prometheus('# HELP x\nenhancer_inference_seconds_sum 1.5\nenhancer_batch_size_tiles_bucket{le="4.0"} 3\n')
    after = parse_prometheus('enhancer_inference_seconds_sum 4.0\nenhancer_batch_size_tiles_bucket{le="4.0"} 10\n')
    assert metric_delta(before, after, "enhancer_inference_seconds_sum") == 2.5
    assert metric_delta(before, after, "enhancer_batch_size_tiles_bucket", le="4.0") == 7


def test_simulated_device_sleeps_a_plus_b_n_and_returns_its_input():
    slept = []
    device = SimulatedDevice(0.005, 0.00025, sleep=slept.append)
    batch = np.random.default_rng(0).random((8, 16, 16, 3), dtype=np.float32)
    assert device.forward(batch) is batch
    assert slept == [pytest.approx(0.005 + 8 * 0.00025)]
    assert device.batches == [8]
    assert device.warm_up([(64, 64)], 32) == 0.0
    # the cost model's own limit for batch 32 vs 1 (the target is 10x of it at most)
    assert ceiling_ratio(0.005, 0.00025, 32) == pytest.approx(168 / 13)


class GatedDevice(SimulatedDevice):
    """Holds the first batch until the test has queued everything, so later batches must mix."""

    def __init__(self):
        super().__init__(0.0, 0.0)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.held = 0  # tiles in the batch held at the gate

    def forward(self, batch, inputs=None):
        if not self.entered.is_set():
            self.held = len(batch)
            self.entered.set()
            assert self.gate.wait(timeout=120), "test never opened the gate"
        return super().forward(batch, inputs)


@pytest.mark.anyio
async def test_simulated_device_behind_the_real_app_batches_tiles_across_requests():
    device = GatedDevice()
    settings = make_settings(tile_size=64, tile_overlap=8, max_batch_size=32, max_batch_delay_ms=0)
    app = create_app(settings, models=serving(device))
    images = [photo_like(120, 136, seed=i) for i in range(8)]
    bodies = [encode_bgr(img, ".png") for img in images]
    per_request = tiling.plan_tiles(120, 136, 64, 8, multiple=device.spec.size_multiple).num_tiles
    async with running_app(app) as client:
        batcher = app.state.runtime.batcher

        async def send(body):
            return await client.post("/upscale", files={"image": ("x.png", body, "image/png")})

        tasks = [asyncio.create_task(send(b)) for b in bodies]
        await asyncio.to_thread(device.entered.wait, 60)
        # Wait until every request's tiles are either in the held first batch or queued (the first
        # batch holds whatever had arrived when it formed: max_batch_delay_ms is 0).
        await until(lambda: batcher.queued_tiles + device.held == 8 * per_request)
        device.gate.set()
        responses = await asyncio.gather(*tasks)
    assert [r.status_code for r in responses] == [200] * 8
    for img, response in zip(images, responses):  # identity device: exact round trip, no cross-talk
        np.testing.assert_array_equal(decode_bytes(response.content), img)
    assert sum(device.batches) == 8 * per_request
    assert max(device.batches[1:]) == 32 > per_request  # later batches hold several requests' tiles


def test_every_registered_benchmark_has_a_run_and_soak_and_tile_size_are_registered():
    import importlib

    from benchmarks.run import BENCHMARKS

    assert {"soak", "tile_size"} <= set(BENCHMARKS)
    for name, module in BENCHMARKS.items():
        assert module == f"benchmarks.drivers.{name}"  # results/<name>.json comes from drivers/<name>.py
        assert callable(importlib.import_module(module).run), name


def test_a_server_process_reports_what_its_readyz_said_not_what_it_was_asked():
    from benchmarks.harness.server import enhancer_server

    server = enhancer_server("asked", tile_size=512)
    with pytest.raises(RuntimeError, match="has not answered /readyz"):
        server.served
    server.readyz = {"status": "ready", "device": "CPU", "settings": {"tile_size": 576, "tile_overlap": 48}}
    assert server.env["ENHANCER_TILE_SIZE"] == "512"
    assert server.served == {"server": "asked", "device": "CPU", "settings": {"tile_size": 576, "tile_overlap": 48}}


def test_a_server_setting_reaches_every_server_unless_the_benchmark_sets_it(monkeypatch):
    """`run.py --server-setting precision=float32` becomes ENHANCER_PRECISION of each server a
    driver starts; a driver's own keyword wins; a malformed value is refused."""
    from benchmarks import run
    from benchmarks.harness import server

    monkeypatch.setattr(server, "SERVER_SETTINGS", {"precision": "float32"})
    assert server.enhancer_server("a").env["ENHANCER_PRECISION"] == "float32"
    assert server.enhancer_server("b", precision="bfloat16").env["ENHANCER_PRECISION"] == "bfloat16"
    with pytest.raises(SystemExit):
        run.main(["--report-only", "--server-setting", "precision"])
