"""Fairness with a 4x upscale as the big job (issue 14): see benchmarks.drivers.fairness.run_x4."""

from __future__ import annotations

from benchmarks.drivers.fairness import run_x4 as run

__all__ = ["run"]
