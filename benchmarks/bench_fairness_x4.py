"""Fairness with a 4x upscale as the big job (issue 14): see benchmarks.bench_fairness.run_x4."""

from __future__ import annotations

from benchmarks.bench_fairness import run_x4 as run

__all__ = ["run"]
