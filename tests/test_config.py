"""Settings: defaults, environment overrides, validation, and that .env.example documents them all."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import MODEL_DIR, REPO_ROOT
from pydantic import ValidationError

from enhancer.config import GPU_DEFAULTS, Settings


def _example_values() -> dict[str, str]:
    values = {}
    for line in (REPO_ROOT / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def _commented_out_settings() -> set[str]:
    """`#ENHANCER_X=...` lines: listed, but left unset so the device can choose the value."""
    lines = (REPO_ROOT / ".env.example").read_text().splitlines()
    return {line[1:].partition("=")[0] for line in lines if line.startswith("#ENHANCER_")}


def test_env_example_lists_every_setting_with_its_default(monkeypatch):
    example = _example_values()
    device_dependent = _commented_out_settings()
    # only the settings whose default depends on the device may be left unset in a copied .env
    assert device_dependent == {f"ENHANCER_{name.upper()}" for name in GPU_DEFAULTS}
    assert set(example) | device_dependent == {f"ENHANCER_{name.upper()}" for name in Settings.model_fields}
    for key, value in example.items():
        monkeypatch.setenv(key, value)
    from_example = Settings(_env_file=None)
    for key in example:
        monkeypatch.delenv(key)
    assert from_example.model_dump() == Settings(_env_file=None).model_dump()


def test_documented_defaults():
    s = Settings(_env_file=None)
    assert (s.tile_size, s.tile_overlap) == (576, 32)
    assert s.max_upload_bytes == 50 * 1024 * 1024 and s.max_pixels == 50_000_000
    assert s.port == 8000


def test_every_setting_is_documented():
    for name, field in Settings.model_fields.items():
        assert field.description and len(field.description) > 20, name


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("ENHANCER_TILE_SIZE", "256")
    monkeypatch.setenv("ENHANCER_MAX_BATCH_DELAY_MS", "12.5")
    monkeypatch.setenv("ENHANCER_LOG_LEVEL", "DEBUG")
    s = Settings(_env_file=None)
    assert s.tile_size == 256
    assert s.max_batch_delay_s == pytest.approx(0.0125)
    assert s.log_level == "debug"


def test_default_model_dir_is_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Settings(_env_file=None).model_dir == (MODEL_DIR.parent / "dejpeg-q").resolve()  # the served default


def test_model_dir_in_working_directory_wins(tmp_path, monkeypatch):
    (tmp_path / "weights" / "dejpeg-q").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert Settings(_env_file=None).model_dir == (tmp_path / "weights" / "dejpeg-q").resolve()


def test_missing_relative_model_dir_points_at_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Settings(_env_file=None, model_dir=Path("nowhere")).model_dir == tmp_path / "nowhere"


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"tile_size": 64, "tile_overlap": 40}, "at most half"),
        ({"max_batch_size": 0}, "greater than or equal to 1"),
        ({"batches_in_flight": 0}, "batches_in_flight\n.*greater than or equal to 1"),
        ({"batches_in_flight": 9}, "batches_in_flight\n.*less than or equal to 8"),
        ({"log_level": "loud"}, "log_level"),
    ],
)
def test_invalid_settings_are_rejected_with_a_reason(overrides, message):
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None, **overrides)
