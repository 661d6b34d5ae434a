"""Rule (a)'s figures from an `enhancer calibrate-steps` record (eval/step_calibration.json): over the
calibration's kinds with its chosen factors, the mean gain over q50-95, the worst image over q50-95,
and the mean over q10-q30 (dB).

    python training-runs/dejpeg-q8/calibrated_figures.py STEP_CALIBRATION.json
"""

import json
import sys

import numpy as np

summary = json.loads(open(sys.argv[1]).read())["summary"]
high = [(kind, q) for kind in summary for q in summary[kind] if int(q) >= 50]
low = [(kind, q) for kind in summary for q in summary[kind] if int(q) <= 30]
print(json.dumps({
    "mean_q50_95": float(np.mean([summary[k][q]["chosen"]["mean"] for k, q in high])),
    "worst_q50_95": float(min(summary[k][q]["chosen"]["worst"] for k, q in high)),
    "mean_q10_30": float(np.mean([summary[k][q]["chosen"]["mean"] for k, q in low])),
}, indent=1))
