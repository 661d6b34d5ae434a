"""Settings: defaults, environment overrides, validation, and that .env.example documents them all."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import MODEL_DIR, REPO_ROOT
from pydantic import ValidationError

from enhancer.config import GPU_DEFAULTS, Settings
from enhancer.models.contract import ModelSpec


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


def test_a_copied_env_example_leaves_each_model_its_own_overlap(monkeypatch):
    """.env.example copied to .env must start the shipped models: an overlap set there would apply
    to every model, below dejpeg-q's reach."""
    for key, value in _example_values().items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)
    spec = ModelSpec(name="dejpeg-q", reach=42, size_multiple=16)
    spec.check_tiling(*settings.tiling_for(spec))
    assert settings.tiling_for(spec).tile_overlap == 48


def test_documented_defaults():
    s = Settings(_env_file=None)
    assert (s.tile_size, s.tile_overlap) == (576, 32)
    assert s.max_upload_bytes == 50 * 1024 * 1024 and s.max_pixels == 50_000_000
    assert s.port == 8000


def test_upscale_model_dirs_default_to_the_shipped_folders_and_read_a_comma_list(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkout = MODEL_DIR.parent  # weights/ in the checkout: relative defaults are found from anywhere
    (tmp_path / "weights" / "upscale-x2").mkdir(parents=True)  # ... but the working directory's wins
    assert Settings(_env_file=None).upscale_model_dirs == [
        (tmp_path / "weights" / "upscale-x2").resolve(),
        tmp_path / "weights" / "upscale-x4" if not (checkout / "upscale-x4").is_dir() else checkout / "upscale-x4",
    ]
    monkeypatch.setenv("ENHANCER_UPSCALE_MODEL_DIRS", f" {tmp_path / 'a'} ,{tmp_path / 'b'},")
    assert Settings(_env_file=None).upscale_model_dirs == [tmp_path / "a", tmp_path / "b"]
    for off in ("none", "None"):
        monkeypatch.setenv("ENHANCER_UPSCALE_MODEL_DIRS", off)
        assert Settings(_env_file=None).upscale_model_dirs == []
    monkeypatch.setenv("ENHANCER_UPSCALE_MODEL_DIRS", "")  # as an empty line in .env: the default
    assert len(Settings(_env_file=None).upscale_model_dirs) == 2


def _spec(scale: int = 1, reach: int = 0, multiple: int = 16) -> ModelSpec:
    return ModelSpec(name=f"x{scale}", reach=reach, scale=scale, size_multiple=multiple)


def test_enlarging_models_take_half_the_tile_edge():
    cpu = Settings(_env_file=None)
    assert [cpu.tiling_for(_spec(scale)).tile_size for scale in (1, 2, 4)] == [576, 288, 288]
    assert cpu.for_device("gpu").tiling_for(_spec(4)).tile_size == 512
    small = Settings(_env_file=None, tile_size=128, tile_overlap=48)
    assert small.tiling_for(_spec(4)).tile_size == 96  # half would be 64: tiles of mostly overlap; twice the overlap
    assert Settings(_env_file=None, tile_size=100, tile_overlap=4).tiling_for(_spec(2)).tile_size == 48  # a multiple of 16
    assert Settings(_env_file=None, upscale_tile_size=320).tiling_for(_spec(2)).tile_size == 320
    with pytest.raises(ValidationError, match="at most half of upscale_tile_size"):
        Settings(_env_file=None, upscale_tile_size=48, tile_overlap=32)


def test_each_model_gets_the_overlap_its_own_reach_needs():
    cpu = Settings(_env_file=None)
    # unset: the default 32, raised to each model's reach rounded up to its size multiple
    assert cpu.tiling_for(_spec(1, reach=20)) == (576, 32)
    assert cpu.tiling_for(_spec(1, reach=42)) == (576, 48)
    assert cpu.tiling_for(_spec(2, reach=48)) == (288, 48)
    assert cpu.tiling_for(_spec(4, reach=50)) == (288, 64)  # a far-seeing model does not raise the others'
    assert cpu.tiling_for(_spec(1, reach=42, multiple=4)) == (576, 44)
    # an upscaler's half tile still holds twice its own overlap
    assert Settings(_env_file=None, tile_size=160).tiling_for(_spec(4, reach=50)) == (128, 64)
    # set: the same for every model (start-up refuses it below a model's reach)
    explicit = Settings(_env_file=None, tile_overlap=40)
    assert explicit.tiling_for(_spec(1, reach=42)) == (576, 40)
    with pytest.raises(ValueError, match="below the receptive-field reach"):
        _spec(1, reach=42).check_tiling(*explicit.tiling_for(_spec(1, reach=42)))


def test_an_image_alone_gets_solo_tiles_only_at_scale_1_and_batch_1_with_exact_shapes():
    cpu = Settings(_env_file=None)
    restorer, upscaler = _spec(1, reach=42), _spec(2, reach=48)
    assert cpu.uses_solo_tiles
    assert cpu.tiling_for(restorer, alone=True) == (1536, 48)
    assert cpu.tiling_for(restorer) == (576, 48)  # beside other requests: the normal tile
    assert cpu.tiling_for(upscaler, alone=True) == cpu.tiling_for(upscaler) == (288, 48)
    assert (cpu.solo_tile_for(restorer), cpu.solo_tile_for(upscaler)) == (1536, None)
    off = [
        cpu.for_device("gpu"),  # tiles of one shape share batches there
        Settings(_env_file=None, max_batch_size=2),  # several big tiles' activations at once
        Settings(_env_file=None, tile_buckets=True),  # a shape of its own to warm up
        Settings(_env_file=None, solo_tile_size=0),
        Settings(_env_file=None, solo_tile_size=512),  # not larger than the tile
        Settings(_env_file=None, tile_size=768),  # a tile size that was set holds for every image
    ]
    for settings in off:
        assert not settings.uses_solo_tiles
        assert settings.tiling_for(restorer, alone=True) == settings.tiling_for(restorer)
        assert settings.solo_tile_for(restorer) is None
    assert Settings(_env_file=None, tile_size=768, solo_tile_size=2048).tiling_for(restorer, alone=True) == (2048, 48)
    assert "solo_tile_size 1536" in cpu.describe_inference("cpu", "CPU")
    assert "solo_tile_size off" in cpu.for_device("gpu").describe_inference("gpu", "GPU")


def test_a_solo_tile_edge_the_model_cannot_take_is_refused_naming_the_setting():
    settings = Settings(_env_file=None, solo_tile_size=1000)
    spec = _spec(1, reach=42)
    with pytest.raises(ValueError, match="ENHANCER_SOLO_TILE_SIZE .1000. must be a multiple of 16"):
        spec.check_tiling(*settings.tiling_for(spec, alone=True), setting="ENHANCER_SOLO_TILE_SIZE")


def test_a_reach_that_fills_half_the_tile_is_refused_at_start_up():
    tiny = Settings(_env_file=None, tile_size=96)
    spec = _spec(1, reach=50)
    assert tiny.tiling_for(spec) == (96, 64)
    with pytest.raises(ValueError, match="more than half its tile size .96.: tiles would be mostly overlap; raise ENHANCER_TILE_SIZE$"):
        spec.check_tiling(*tiny.tiling_for(spec))
    upscaler = _spec(4, reach=50)
    small_up = Settings(_env_file=None, upscale_tile_size=96)
    with pytest.raises(ValueError, match="raise ENHANCER_UPSCALE_TILE_SIZE$"):
        upscaler.check_tiling(*small_up.tiling_for(upscaler))


def test_max_output_pixels_default_and_override(monkeypatch):
    assert Settings(_env_file=None).max_output_pixels == 64_000_000
    monkeypatch.setenv("ENHANCER_MAX_OUTPUT_PIXELS", "1000000")
    assert Settings(_env_file=None).max_output_pixels == 1_000_000


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
