"""The mix-4 validation rows (training.train.conditioned_validation with hard truths) for the
weights a run starts from, so its log can be read against them (start_validation.json).

    python training-runs/dejpeg-q5/start_validation.py training-runs/dejpeg-q4/best.weights.h5 OUT.json
"""

import json
import sys
from pathlib import Path

from enhancer.training import network, synthetic
from enhancer.training.dataset import load_images
from enhancer.training.train import _score, conditioned_validation, evaluate_gain

model = network.build("dejpeg_q")
model.load_weights(sys.argv[1])
val = conditioned_validation(load_images(Path("data/photos/val")), synthetic.list_fonts(Path("data/fonts")), 512,
                             extended=True, pages=load_images(Path("data/scans/val")), hard=True)
row = evaluate_gain(lambda *inputs: model(list(inputs), training=False).numpy(), val)
row["score"] = _score(row)
Path(sys.argv[2]).write_text(json.dumps({"weights": sys.argv[1], **row}, indent=1) + "\n")
print({k: round(v, 3) for k, v in row.items() if k.startswith("gain_") or k == "score"})
