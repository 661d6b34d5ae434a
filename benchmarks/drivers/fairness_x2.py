"""Fairness with a 2x upscale as the big job (issue 14): see benchmarks.drivers.fairness.run_x2."""

from __future__ import annotations

from benchmarks.drivers.fairness import run_x2 as run

__all__ = ["run"]
