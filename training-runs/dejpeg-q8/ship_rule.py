"""`dejpeg-q8`'s ship rule (training-runs/README.md), applied to the shipped model's and the
candidate's validation records: (a) `enhancer calibrate-steps` (eval/step_calibration.json), (b)
`soft_validation.py`, (c) `dejpeg-q7/texture_validation.py`.

    python training-runs/dejpeg-q8/ship_rule.py SHIPPED_CALIBRATION CANDIDATE_CALIBRATION \\
        SHIPPED_SOFT CANDIDATE_SOFT SHIPPED_TEXTURE CANDIDATE_TEXTURE
"""

import json
import sys

import numpy as np


def calibrated(path):
    summary = json.loads(open(path).read())["summary"]
    cells = [(kind, q) for kind in summary for q in summary[kind]]
    high = [summary[k][q]["chosen"] for k, q in cells if int(q) >= 50]
    return {"mean_q50_95": float(np.mean([c["mean"] for c in high])),
            "worst_q50_95": float(min(c["worst"] for c in high)),
            "mean_q10_30": float(np.mean([summary[k][q]["chosen"]["mean"] for k, q in cells if int(q) <= 30]))}


def summary(path):
    return json.loads(open(path).read())["summary"]


if __name__ == "__main__":  # dejpeg-q10/ship_rule.py imports the readers above
    (a0, a1), (b0, b1), (c0, c1) = ((f(sys.argv[i]), f(sys.argv[i + 1])) for i, f in
                                     ((1, calibrated), (3, summary), (5, summary)))
    texture_gains = ("gain_q50", "gain_q70", "gain_q90")
    checks = {
        "a: mean q50-95 at least the shipped minus 0.01": a1["mean_q50_95"] >= a0["mean_q50_95"] - 0.01,
        "a: worst q50-95 at least the shipped minus 0.01": a1["worst_q50_95"] >= a0["worst_q50_95"] - 0.01,
        "a: mean q10-30 at least the shipped minus 0.01": a1["mean_q10_30"] >= a0["mean_q10_30"] - 0.01,
        "b: soft worst image higher": min(v["worst"] for v in b1.values()) > min(v["worst"] for v in b0.values()),
        "b: soft mean per quality at least the shipped minus 0.02": all(b1[k]["mean"] >= b0[k]["mean"] - 0.02 for k in b0),
        "c: texture worst clean at least 45 dB": c1["clean_psnr"]["worst"] >= 45.0,
        "c: texture worst gains at least the shipped minus 0.02": all(c1[k]["worst"] >= c0[k]["worst"] - 0.02
                                                                      for k in texture_gains),
        "c: texture mean at least the shipped minus 0.02": bool(np.mean([c1[k]["mean"] for k in texture_gains])
                                                            >= np.mean([c0[k]["mean"] for k in texture_gains]) - 0.02),
    }
    print(json.dumps({"shipped": {"calibrated": a0, "soft": b0, "texture": c0},
                      "candidate": {"calibrated": a1, "soft": b1, "texture": c1},
                      "checks": checks, "ship": all(checks.values())}, indent=1, default=float))
