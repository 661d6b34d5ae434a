"""numpy's huge-page advice is off in every process that imports the package first, unless the
environment chose (enhancer.host_memory); checked in fresh interpreters, as numpy reads it once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "from numpy._core.multiarray import _get_madvise_hugepage as advice; print(SMALL, advice())"


def _run(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"} | env
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize(
    ("first", "env", "expected"),
    [
        ("import enhancer", {}, "True False"),  # the package first: small pages
        ("import enhancer", {"NUMPY_MADVISE_HUGEPAGE": "1"}, "False True"),  # the environment chose
        ("import numpy, enhancer", {}, "False True"),  # numpy first: it kept its default, and says so
    ],
)
def test_numpy_gets_small_pages_when_the_package_is_imported_first(first, env, expected):
    assert _run(f"{first}; SMALL = enhancer.SMALL_PAGES; {PROBE}", **env) == expected
