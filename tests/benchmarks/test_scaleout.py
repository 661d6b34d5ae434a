"""The scale-out simulation (benchmarks/drivers/scaleout.py): deterministic, calibrated, and it behaves
like the server it models; the committed results are what the committed code produces."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from helpers import REPO_ROOT

from benchmarks.drivers import scaleout as S

ROOT = REPO_ROOT
RESULTS = ROOT / "benchmarks" / "results"


@pytest.fixture(scope="module")
def model():
    return S.measured_model(RESULTS)


@pytest.fixture(scope="module")
def committed():
    return json.loads((RESULTS / "scaleout.json").read_text())


def _trace(times, kinds: list[S.Kind]) -> S.Trace:
    cat = list(dict.fromkeys(kinds))
    return S.Trace(np.asarray(times, float), np.array([cat.index(k) for k in kinds]), cat, np.zeros(1), [])


THUMB = S.Kind("thumb", 256, 256)
BIG = S.Kind("48 MP", 8000, 6000)
HD = S.Kind("1080p", 1920, 1080)


# ------------------------------------------------------------------------------- the model's inputs
def test_every_parameter_names_a_committed_result_file(model):
    for name, source in model.sources.items():
        files = [w.rstrip(":,;()") for w in source.split() if w.rstrip(":,;()").endswith(".json")]
        assert files, f"{name}: no result file named in {source!r}"
        for f in files:
            assert (RESULTS / f).is_file(), f"{name}: {f} is not committed"


def test_cpu_tile_cost_follows_the_measured_tile_sizes(model):
    ts = json.loads((RESULTS / "tile_size.json").read_text())
    for image in ts["images"]:
        run = image["576"]
        plan = S.plan_tiles(image["height"], image["width"], 576, 32, multiple=4)
        predicted = run["tiles"] * model.cpu_tile(plan.tile_shape[0] * plan.tile_shape[1])
        assert predicted == pytest.approx(run["median_s"], rel=0.12), (image["width"], image["height"])


def test_host_work_grows_with_pixels_and_passes_through_the_measurements(model):
    mem = json.loads((RESULTS / "memory.json").read_text())
    for image in mem["images"]:
        st = image["server_timing_s"]
        assert model.pre(image["megapixels"]) == pytest.approx(st["decode"] + st["tile"] / 2)
        assert model.post(image["megapixels"]) == pytest.approx(st["encode"] + st["tile"] / 2)
    assert 0 < model.pre(0.01) < model.pre(1) < model.pre(48) < model.pre(96)


# --------------------------------------------------------------------------------- determinism
def _short_day(seed):
    return S.day_trace(seed, peak_rps=3.0, duration_s=1200, start_h=15.0)


def test_same_seed_same_numbers_other_seed_other_numbers(model):
    runs = []
    for seed in (3, 3, 4):
        cfg = S.Config(policy="p2c", autoscale=True, replicas=2, target_mp=16.0, seed=seed)
        runs.append(S.simulate(model, cfg, _short_day(seed))[0])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_calibration_is_within_15_percent_and_matches_the_committed_figures(model, committed):
    cal = S.calibrate(model, RESULTS, seed=committed["seed"])
    assert cal["all_within_15pct"], [(r["load"], r["throughput_req_s"]["error"], r["p99_s"]["error"]) for r in cal["rows"]]
    for now, then in zip(cal["rows"], committed["calibration"]["rows"]):
        assert now["load"] == then["load"]
        assert now["throughput_req_s"]["simulated"] == pytest.approx(then["throughput_req_s"]["simulated"], rel=1e-9)
        assert now["p99_s"]["simulated"] == pytest.approx(then["p99_s"]["simulated"], rel=1e-9)


def test_committed_choice_follows_from_the_committed_sweep(committed):
    assert S._choose(committed["threshold_sweep_cpu"])["target_mp"] == committed["chosen_cpu"]["target_mp"]
    assert S._choose(committed["threshold_sweep_gpu"])["target_mp"] == committed["chosen_gpu"]["target_mp"]
    chosen = next(s for s in committed["threshold_sweep_cpu"] if s["target_mp"] == committed["chosen_cpu"]["target_mp"])
    assert chosen["p99_small_s"] <= S.SLO_SMALL_S


def test_the_trace_is_a_day_of_the_stated_mix(committed):
    trace = S.day_trace(committed["seed"], committed["trace"]["peak_rps"])
    assert len(trace.times) == committed["trace"]["requests"]
    assert np.all(np.diff(trace.times) >= 0) and 0 <= trace.times[0] and trace.times[-1] < 86400
    shares = Counter(trace.catalogue[k].name for k in trace.kinds)
    for kind, share in S.DAY_MIX:
        assert shares[kind.name] / len(trace.times) == pytest.approx(share, abs=0.01)
    hourly = np.bincount((trace.times // 3600).astype(int), minlength=24)
    assert hourly[4] < hourly[16] / 4  # night trough, afternoon peak


# ------------------------------------------------------------------------ behaviour of one replica
def test_round_robin_tiles_let_a_thumbnail_pass_a_48_mp_photo(model):
    sim = S.Simulation(model, S.Config(replicas=1))
    s = sim.run(_trace([0.0, 5.0], [BIG, THUMB]))
    assert s["ok"] == 2
    big, thumb = sim.latency
    assert thumb < 2.0 < 30.0 < big  # the thumbnail waits for about one tile of the big photo, not all


def test_tile_queue_refuses_like_the_batcher(model):
    # a 48 MP photo alone is admitted although it has more tiles than the queue holds (nothing was
    # queued); while it waits, a second one is refused with 503, a thumbnail still fits
    plan = S.plan_tiles(6000, 8000, 576, 32, multiple=4)
    cfg = S.Config(replicas=1, max_queue_tiles=plan.num_tiles - 1)
    sim = S.Simulation(model, cfg)
    sim.run(_trace([0.0, 8.0, 9.0], [BIG, BIG, THUMB]))
    assert list(sim.status) == [S.OK, S.QUEUE_FULL, S.OK]


def test_requests_past_the_timeout_get_504_and_their_tiles_are_dropped(model):
    cfg = S.Config(replicas=1, request_timeout_s=20.0)
    sim = S.Simulation(model, cfg)
    sim.run(_trace([0.0, 1.0], [BIG, THUMB]))
    assert list(sim.status) == [S.TIMEOUT, S.OK]
    assert sim.replicas[0].queued == 0


def test_gpu_batches_hold_at_most_eight_tiles_of_one_shape(model):
    sim = S.Simulation(model, S.Config(device="gpu", replicas=1))
    seen = []
    form = sim._form

    def spy(rep):
        batch, cost = form(rep)
        seen.append(([r.shape for r in batch], cost))
        return batch, cost

    sim._form = spy
    sim.run(_trace([0.0, 0.001, 0.002], [BIG, HD, THUMB]))
    assert sim.status.tolist() == [S.OK] * 3
    assert all(1 <= len(shapes) <= 8 and len(set(shapes)) == 1 for shapes, _ in seen)
    assert all(cost >= model.gpu_batch_cost_s * 0.5 for _, cost in seen)
    assert max(len(shapes) for shapes, _ in seen) == 8


# ----------------------------------------------------------------------------------- balancers
def _mixed(seed, n_big=6, rate=4.0, duration=120.0):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.random(int(rate * duration)) * duration)
    kinds = [THUMB] * len(t)
    for i in rng.choice(len(t), n_big, replace=False):
        kinds[i] = BIG
    return _trace(t, kinds)


def _latencies(model, policy, trace, replicas=4):
    sim = S.Simulation(model, S.Config(policy=policy, replicas=replicas, seed=5))
    sim.run(trace)
    ok = sim.status == S.OK
    thumb = np.array([trace.catalogue[k] is THUMB for k in trace.kinds])
    return float(np.percentile(sim.latency[ok & thumb], 99)), float(np.mean(sim.latency[ok & ~thumb]))


def test_outstanding_request_balancing_beats_round_robin_beside_big_photos(model):
    # 4 replicas, thumbnails at 4/s and six 48 MP photos: round robin keeps dealing thumbnails and
    # big photos to replicas still busy with a big photo; counting requests in flight avoids them
    trace = _mixed(11)
    rr_small, rr_big = _latencies(model, "round_robin", trace)
    lr_small, lr_big = _latencies(model, "least_request", trace)
    p2c_small, p2c_big = _latencies(model, "p2c", trace)
    assert lr_small < 0.85 * rr_small and lr_big < 0.85 * rr_big
    assert p2c_small < rr_small and p2c_big < rr_big


def test_round_robin_deals_in_turn_and_least_request_picks_the_idle_replica(model):
    sim = S.Simulation(model, S.Config(policy="round_robin"))
    for _ in range(3):
        sim.add_replica(0.0, ready_now=True)
    picks = [sim._pick().id for _ in range(6)]
    assert picks[:3] == picks[3:] and sorted(picks[:3]) == [0, 1, 2]
    sim = S.Simulation(model, S.Config(policy="least_request"))
    for _ in range(3):
        sim.add_replica(0.0, ready_now=True)
    sim.ready[0].outstanding, sim.ready[1].outstanding, sim.ready[2].outstanding = 3, 0, 1
    assert sim._pick() is sim.ready[1]


# ---------------------------------------------------------------------------------- autoscaler
def test_autoscaler_adds_replicas_under_load_and_removes_them_only_after_the_window(model):
    t = np.arange(0, 600, 0.5)  # 2 req/s of 1080p for 10 minutes, then nothing
    trace = _trace(t, [HD] * len(t))
    cfg = S.Config(policy="least_request", autoscale=True, replicas=2, min_replicas=2, target_mp=4.0, seed=2)
    s, sim = S.simulate(model, cfg, trace)
    assert s["ok"] == len(t)
    ready = {round(x[0]): x[1] for x in sim.samples}
    assert max(ready.values()) > 2
    peak_t = max(ready, key=lambda k: (ready[k], -k))
    assert all(v >= 2 for v in ready.values())
    # no scale-down within the 300 s stabilisation window after the load peaked
    late = [v for k, v in ready.items() if peak_t < k < peak_t + 250]
    assert late and min(late) > 2


def test_scale_down_within_the_drain_bound_loses_no_request(model):
    # a replica holding a 48 MP photo (over 40 s alone on the measured CPU) is removed 15 s in: with
    # a 5 s drain bound (+ 10 s preStop) the photo is lost (503), with 300 s it is answered and the
    # pod leaves once it is
    trace = _trace([0.0], [BIG])
    for drain, lost in [(5.0, True), (300.0, False)]:
        sim = S.Simulation(model, S.Config(policy="least_request", replicas=2, shutdown_timeout_s=drain))
        tick = sim.tick

        def drain_busy(t, _tick=tick, _sim=sim):
            _tick(t)
            if t == 15.0:
                (busy,) = [r for r in _sim.ready if r.reqs]
                _sim._drain(busy, t)

        sim.tick = drain_busy
        s = sim.run(trace)
        assert (s["by_status"].get(S.STATUS_NAMES[S.DRAIN], 0) == 1) is lost, (drain, s["by_status"])
        (gone,) = [r for r in sim.replicas if r.state == "gone"]
        if lost:
            assert gone.t_gone == pytest.approx(15.0 + 10.0 + drain)
        else:
            assert 15.0 + 10.0 < gone.t_gone == pytest.approx(sim.t_end[0])
