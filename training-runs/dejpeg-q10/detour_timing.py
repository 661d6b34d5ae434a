"""Before `dejpeg-q10` was trained: what a detour through 1/8 resolution costs `dejpeg_q`, for three
sizes of it (random weights; the cost does not depend on them). Per variant: multiply-accumulates
per pixel, receptive-field reach, parameters, and float32 MP/s on a batch of 4 576x576 tiles (best
of 5 calls after a warm-up). Writes detour_timing.json beside it.

    python training-runs/dejpeg-q10/detour_timing.py   # float32: TensorFlow's default math
"""

import json
import os
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from enhancer.training import network
from enhancer.training.commands import machine_description
from enhancer.training.jpeg_damage import ijg_recipe

VARIANTS = {"dejpeg_q (shipped)": {}, "96 channels x 3 (dejpeg_q_deep)": {"eighth_channels": 96, "eighth_blocks": 3},
            "128 channels x 2": {"eighth_channels": 128, "eighth_blocks": 2},
            "64 channels x 3": {"eighth_channels": 64, "eighth_blocks": 3}}

x = np.random.default_rng(0).uniform(0, 1, (4, 576, 576, 3)).astype(np.float32)
q = np.repeat(ijg_recipe(30).condition()[None], 4, 0)
rows = {}
for name, sizes in VARIANTS.items():
    model = network.build_dejpeg_q(**sizes)
    forward = tf.function(lambda a, b, m=model: m([a, b], training=False))
    forward(x, q)
    seconds = []
    for _ in range(5):
        start = time.perf_counter()
        forward(x, q).numpy()
        seconds.append(time.perf_counter() - start)
    rows[name] = {"macs_per_pixel": network.macs_per_pixel(model), "reach": network.receptive_field_reach(model),
                  "parameters": int(model.count_params()), "mp_per_s": x.shape[0] * 576 * 576 / min(seconds) / 1e6}
    print(name, rows[name], flush=True)
result = {"variants": rows, "machine": machine_description(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
          "load_average": os.getloadavg()[0], "onednn_fpmath_mode": os.environ.get("ONEDNN_DEFAULT_FPMATH_MODE", "unset (float32)")}
(Path(__file__).parent / "detour_timing.json").write_text(json.dumps(result, indent=1) + "\n")
