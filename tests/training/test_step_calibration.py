"""Choosing a restorer's auto_step_scale on the validation set: the rule, and what the model is told."""

from __future__ import annotations

import numpy as np

from helpers import photo_like
from enhancer.imaging.jpeg import ijg_table
from enhancer.training.step_calibration import choose, measure


def _gains(rows):
    """{kind: {quality: {factor: [per-image gains]}}} from (kind, quality, factor, gains) rows."""
    table = {}
    for kind, quality, factor, values in rows:
        table.setdefault(kind, {}).setdefault(str(quality), {})[str(factor)] = values
    return table


def test_choose_takes_the_best_mean_among_factors_whose_worst_image_keeps_the_floor():
    gains = _gains([
        # q50: the file's own steps are best and safe everywhere
        ("photo", 50, 1.0, [0.9, 0.5]), ("photo", 50, 0.5, [0.8, 0.4]),
        ("noisy", 50, 1.0, [0.3]), ("noisy", 50, 0.5, [0.2]),
        # q90: own steps have the best mean but lose a little on the noisy kind; 0.5 keeps 0
        ("photo", 90, 1.0, [0.6, 0.3]), ("photo", 90, 0.5, [0.4, 0.1]),
        ("noisy", 90, 1.0, [-0.05]), ("noisy", 90, 0.5, [0.05]),
    ])  # fmt: skip
    assert choose(gains, floor=0.0) == [(50, 1.0), (90, 0.5)]
    assert choose(gains, floor=-0.1) == [(50, 1.0), (90, 1.0)]


def test_choose_falls_back_to_the_best_worst_image_and_never_tells_a_better_file_larger_steps():
    gains = _gains([
        ("page", 85, 1.0, [-0.3]), ("page", 85, 0.5, [-0.1]), ("page", 85, 0.25, [-0.2]),
        ("page", 95, 1.0, [0.2]), ("page", 95, 0.5, [0.1]), ("page", 95, 0.25, [0.0]),
    ])  # fmt: skip
    assert choose(gains, floor=0.0) == [(85, 0.5), (95, 0.5)]  # 95 alone would pick 1.0


def test_measure_tells_the_model_the_file_s_own_steps_times_each_factor():
    told = []

    def forward(damaged, quantization):
        told.append(quantization.copy())
        return damaged

    gains = measure(forward, {"photo": [photo_like(64, 64)]}, qualities=(50,), factors=(1.0, 0.5))
    assert gains["photo"]["50"]["1.0"] == [0.0] and gains["photo"]["50"]["0.5"] == [0.0]
    own = ijg_table(50).ravel()
    np.testing.assert_array_equal(told[0][:64], own)
    np.testing.assert_array_equal(told[1][:64], np.clip(np.round(own * 0.5), 1, 255))
    assert told[1][128:].tolist() == [2, 2]



def test_the_test_set_evaluation_tells_a_calibrated_model_what_the_server_tells_it():
    """`enhancer evaluate` must measure the served behaviour: the model's auto steps, and blind."""
    from types import SimpleNamespace

    from enhancer.models.contract import ModelSpec
    from enhancer.training.evaluate import _run_methods

    told = []

    class Recorder:
        conditioned = True
        runner = SimpleNamespace(spec=ModelSpec("m", reach=1, inputs={"quantization": 130}, auto_step_scale=((90, 0.5),)))

        def __call__(self, damaged, quantization):
            told.append(quantization)
            return damaged

    _run_methods({"m": Recorder()}, {90: 1.0}, photo_like(64, 64), 90)
    np.testing.assert_array_equal(told[0][:64], np.clip(np.round(ijg_table(90).ravel() * 0.5), 1, 255))
    assert not told[1].any()  # the blind row
