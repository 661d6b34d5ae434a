"""The rule of training-runs/README.md ("probes-resave") applied to part B of resave_probe.json:
writes rule.json beside it (and prints it).

    python training-runs/probes-resave/rule.py
"""
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from enhancer.imaging.earlier_jpeg import RESAVED_SHARE

HERE = Path(__file__).parent
rows = json.loads((HERE / "resave_probe.json").read_text())["part_b"]["rows"]
flagged = [r for r in rows if r["share"] is not None and r["share"] >= RESAVED_SHARE]
singles = [r for r in rows if r["first"] is None]
resaves = [r for r in rows if r["first"] is not None]


def summary(group):
    without = [r["gain"] for r in group]
    with_rule = [0.0 if r in flagged else r["gain"] for r in group]
    worst = min(range(len(group)), key=lambda i: with_rule[i])
    return {"files": len(group), "flagged": sum(r in flagged for r in group), "judged": sum(r["share"] is not None for r in group),
            "mean_without": float(np.mean(without)), "worst_without": float(min(without)),
            "mean_with": float(np.mean(with_rule)), "worst_with": float(min(with_rule)),
            "worst_with_file": f"{group[worst]['kind']}{group[worst]['image']} first q{group[worst]['first']} q{group[worst]['quality']}"}


by_setting = defaultdict(list)
for r in resaves:
    by_setting[f"first{r['first']}_q{r['quality']}"].append(r)
by_kind = defaultdict(list)
for r in resaves:
    by_kind[r["kind"]].append(r)
result = {
    "threshold": RESAVED_SHARE,
    "single_saves_flagged": [f"{r['kind']}{r['image']} q{r['quality']} share {r['share']:.3f} gain {r['gain']:+.3f}" for r in singles if r in flagged],
    "single_saves": summary(singles),
    "resaves": summary(resaves),
    "resaves_per_setting": {k: summary(v) for k, v in sorted(by_setting.items())},
    "resaves_per_kind": {k: summary(v) for k, v in sorted(by_kind.items())},
}
s = result["resaves"]
result["rule_holds"] = {"1_no_single_save_flagged": not result["single_saves_flagged"],
                        "2_mean_and_worst_higher": s["mean_with"] > s["mean_without"] and s["worst_with"] > s["worst_without"]}
(HERE / "rule.json").write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps(result, indent=1))
