"""Rule (d) of `dejpeg-q10`: the restorers' float32 speed at the served CPU tile, measured as
`enhancer evaluate` measures it (`measure_speed`: batch 1 of 576x576), the shipped model and the
candidate loaded in one process and measured in alternation, median of the rounds.

    ENHANCER_PRECISION=float32 python training-runs/dejpeg-q10/speed.py SHIPPED CANDIDATE OUT.json
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from enhancer.training.commands import machine_description
from enhancer.training.evaluate import ImageForward, measure_speed

ROUNDS = 7

names = sys.argv[1:3]
forwards = {name: ImageForward(Path(name)) for name in names}
speeds = {name: [] for name in names}
for _ in range(ROUNDS):
    for name in names:
        speeds[name].append(measure_speed(forwards[name].images_only))
median = {name: float(np.median(values)) for name, values in speeds.items()}
result = {
    "precision": {name: forwards[name].runner.precision for name in names},  # read back from the runner
    "mp_per_s": speeds, "median_mp_per_s": median,
    "ratio_candidate_over_shipped": median[names[1]] / median[names[0]],
    "machine": machine_description(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "load_average": os.getloadavg()[0],
}
Path(sys.argv[3]).write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps({k: result[k] for k in ("median_mp_per_s", "ratio_candidate_over_shipped", "precision")}, indent=1))
