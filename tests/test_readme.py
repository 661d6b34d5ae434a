"""The README keeps its promises: two opening commands, CI runs the second, every setting documented."""

from __future__ import annotations

import re

from helpers import REPO_ROOT

from enhancer.config import Settings

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def _code_blocks() -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", README, re.DOTALL)]


def test_readme_opens_with_a_serve_command_and_a_test_command():
    serve, test = _code_blocks()[:2]
    assert "\n" not in serve and "\n" not in test  # one line each
    assert "venv" in serve and "pip install ." in serve and serve.endswith("enhancer serve")
    assert "venv" in test and 'pip install -e ".[test]"' in test and test.endswith("pytest")
    # nothing but prose comes before them
    assert README.index(serve) < README.index("## ")


def test_ci_runs_exactly_the_readme_test_command():
    test = _code_blocks()[1]
    script = (REPO_ROOT / ".ci" / "run").read_text()
    assert script.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in script
    assert test in script.splitlines()
    assert (REPO_ROOT / ".ci" / "run").stat().st_mode & 0o111


def test_every_setting_is_in_the_readme_table():
    for name in Settings.model_fields:
        assert f"| `ENHANCER_{name.upper()}` |" in README, name


def test_the_metrics_endpoint_row_names_every_metric_the_server_registers():
    from enhancer.metrics import Metrics

    (row,) = [line for line in README.splitlines() if line.startswith("| `GET /metrics` | Prometheus text")]
    for family in Metrics().registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        assert f"`{name}" in row, name
    assert 'status="499"' in row  # the status only logs and metrics ever show
