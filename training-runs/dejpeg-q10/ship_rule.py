"""`dejpeg-q10`'s ship rule (training-runs/README.md), applied to the shipped model's and the
candidate's validation records: (a) `enhancer calibrate-steps` (eval/step_calibration.json), (b)
`dejpeg-q8/soft_validation.py`, (c) `dejpeg-q7/texture_validation.py`, (d) `speed.py`.

    python training-runs/dejpeg-q10/ship_rule.py SHIPPED_CALIBRATION CANDIDATE_CALIBRATION \\
        SHIPPED_SOFT CANDIDATE_SOFT SHIPPED_TEXTURE CANDIDATE_TEXTURE SPEED
"""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np


def _dejpeg_q8_rule():
    """`dejpeg-q8`'s ship rule script, for its readers of the records (`calibrated`, `summary`)."""
    spec = importlib.util.spec_from_file_location("dejpeg_q8_ship_rule", Path(__file__).parent.parent / "dejpeg-q8" / "ship_rule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_q8 = _dejpeg_q8_rule()
calibrated, summary = _q8.calibrated, _q8.summary

speed = json.loads(open(sys.argv[7]).read())
(a0, a1), (b0, b1), (c0, c1) = ((f(sys.argv[i]), f(sys.argv[i + 1])) for i, f in
                                 ((1, calibrated), (3, summary), (5, summary)))
texture_gains = ("gain_q50", "gain_q70", "gain_q90")
checks = {
    "a: mean q50-95 at least the shipped minus 0.01": a1["mean_q50_95"] >= a0["mean_q50_95"] - 0.01,
    "a: worst q50-95 at least the shipped minus 0.01": a1["worst_q50_95"] >= a0["worst_q50_95"] - 0.01,
    "a: mean q10-30 at least the shipped plus 0.05": a1["mean_q10_30"] >= a0["mean_q10_30"] + 0.05,
    "b: soft worst image at least the shipped minus 0.01": (min(v["worst"] for v in b1.values())
                                                            >= min(v["worst"] for v in b0.values()) - 0.01),
    "b: soft mean per quality at least the shipped minus 0.02": all(b1[k]["mean"] >= b0[k]["mean"] - 0.02 for k in b0),
    "c: texture worst clean at least 45 dB": c1["clean_psnr"]["worst"] >= 45.0,
    "c: texture worst gains at least the shipped minus 0.02": all(c1[k]["worst"] >= c0[k]["worst"] - 0.02
                                                                  for k in texture_gains),
    "c: texture mean at least the shipped minus 0.02": bool(np.mean([c1[k]["mean"] for k in texture_gains])
                                                        >= np.mean([c0[k]["mean"] for k in texture_gains]) - 0.02),
    "d: float32 speed at the served tile at least 0.85 of the shipped": speed["ratio_candidate_over_shipped"] >= 0.85,
}
print(json.dumps({"shipped": {"calibrated": a0, "soft": b0, "texture": c0},
                  "candidate": {"calibrated": a1, "soft": b1, "texture": c1},
                  "speed": speed["median_mp_per_s"],
                  "checks": checks, "ship": all(checks.values())}, indent=1, default=float))
