"""The test set, once, for the re-save pass-through (after rule.py decided it ships): which test files
the server would answer with their own pixels under strength auto, and the served restorer's gains
per quality with them (the model's gains from `weights/dejpeg-q/eval/evaluation.json`, the files the
detector flags counted as 0 dB: their answer is their own pixels). Writes testset_once.json.

    python training-runs/probes-resave/testset_once.py
"""
import json
from collections import defaultdict
from pathlib import Path

from enhancer import imaging
from enhancer.conditioning import upright_luma_table
from enhancer.imaging.earlier_jpeg import coarser_lattice_share, is_resaved
from enhancer.training.evaluate import save_jpeg_opencv
from enhancer.training.testset import load_testset

HERE = Path(__file__).parent
evaluation = json.loads(Path("weights/dejpeg-q/eval/evaluation.json").read_text())
model = "dejpeg-q"
gains = {(r["image"], r["quality"]): r["gain"] for r in evaluation["results"] if r["method"] == model}
qualities = sorted({q for _, q in gains})
flags, shares = {}, {}
for name, _kind, image in load_testset(Path("data/testset")):
    for q in qualities:
        decoded = imaging.decode(save_jpeg_opencv(image, q))
        table = upright_luma_table(decoded.info)
        shares[(name, q)] = coarser_lattice_share(decoded.pixels, table)
        flags[(name, q)] = is_resaved(decoded.pixels, table)
kinds = evaluation["test_images"]
table = {}
for q in qualities:
    names = sorted(n for n, qq in gains if qq == q)
    before = {n: gains[(n, q)] for n in names}
    after = {n: 0.0 if flags[(n, q)] else gains[(n, q)] for n in names}
    per_kind = defaultdict(list)
    for n in names:
        per_kind[kinds[n]].append(after[n])
    worst_before, worst_after = min(before, key=before.get), min(after, key=after.get)
    table[f"q{q}"] = {
        "flagged": [n for n in names if flags[(n, q)]],
        "mean_before": sum(before.values()) / len(names), "mean_after": sum(after.values()) / len(names),
        "worst_before": [worst_before, before[worst_before]], "worst_after": [worst_after, after[worst_after]],
        "mean_after_per_kind": {k: sum(v) / len(v) for k, v in sorted(per_kind.items())},
    }
    print(q, table[f"q{q}"]["flagged"], f"mean {table[f'q{q}']['mean_before']:+.3f} -> {table[f'q{q}']['mean_after']:+.3f}",
          f"worst {worst_before} {before[worst_before]:+.3f} -> {worst_after} {after[worst_after]:+.3f}", flush=True)
out = {"model": model, "evaluation": "weights/dejpeg-q/eval/evaluation.json", "per_quality": table,
       "shares": {f"{n} q{q}": s for (n, q), s in sorted(shares.items())}}
(HERE / "testset_once.json").write_text(json.dumps(out, indent=1) + "\n")
