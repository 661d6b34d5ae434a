"""The upscalers' mix-3 ship rule (training-runs/README.md), applied to two `enhancer evaluate
--scale N --testset data/upscale-val` results: the shipped model's and the candidate's.

    python training-runs/upscale-x2u/ship_rule.py SHIPPED/evaluation.json CANDIDATE/evaluation.json
"""

import json
import sys

import numpy as np


def model_rows(path):
    return [r for r in json.loads(open(path).read())["results"] if r["method"] == "model"]


def figures(rows):
    return {
        "worst": min(r["gain"] for r in rows),
        "below_bicubic": sum(r["gain"] < 0 for r in rows),
        "photo_mean": {v: float(np.mean([r["gain"] for r in rows if r["kind"] == "photo" and r["variant"] == v]))
                       for v in sorted({r["variant"] for r in rows})},
    }


shipped, candidate = (figures(model_rows(p)) for p in sys.argv[1:3])
checks = {
    "worst image higher": candidate["worst"] > shipped["worst"],
    "no more pairs below bicubic": candidate["below_bicubic"] <= shipped["below_bicubic"],
    "photo mean within 0.05 dB per variant": all(candidate["photo_mean"][v] >= shipped["photo_mean"][v] - 0.05
                                                  for v in shipped["photo_mean"]),
}
print(json.dumps({"shipped": shipped, "candidate": candidate, "checks": checks, "ship": all(checks.values())}, indent=1))
