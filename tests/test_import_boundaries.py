"""Layer boundaries, checked in a fresh interpreter: the batcher and tiling load neither TensorFlow
nor the web framework, and TensorFlow is loaded only by the model runner."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import REPO_ROOT

HEAVY = ("tensorflow", "keras", "fastapi", "starlette")


def loaded_after(imports: str) -> list[str]:
    """Which of HEAVY a fresh interpreter has in sys.modules after `import <imports>`."""
    code = f"import sys, {imports}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return [name for name in result.stdout.strip().split(",") if name]


def test_batching_and_tiling_load_no_tensorflow_and_no_fastapi():
    assert loaded_after("enhancer.batching, enhancer.tiling") == []


@pytest.mark.parametrize(
    ("imports", "expected"),
    [
        # everything the server runs, except the runner: no TensorFlow until models are loaded
        ("enhancer.pipeline, enhancer.service, enhancer.runtime, enhancer.models.registry, enhancer.api", ["fastapi", "starlette"]),
        ("enhancer.models.saved_model", ["tensorflow", "keras"]),  # the probe does see an import
    ],
)
def test_tensorflow_is_imported_by_the_model_runner_only(imports, expected):
    assert loaded_after(imports) == expected
