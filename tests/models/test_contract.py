"""The model contract: what a model folder declares (ModelSpec), how the registry chooses among
served models, how extra model inputs are made, and that the runner feeds them to the signature.

TensorFlow appears only where a real SavedModel is exported and run; the rest is pure Python.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import MODEL_DIR, encode_bgr, photo_like

from enhancer import conditioning, imaging
from enhancer.config import Settings
from enhancer.metrics import Metrics
from enhancer.models.contract import ModelLoadError, ModelSpec, read_spec
from enhancer.models.registry import ModelRegistry, UnknownModelError, choose_default, model_dirs
from enhancer.runtime import Runtime, ServingState


def write_metadata(folder: Path, **meta) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


# --- ModelSpec from metadata.json -----------------------------------------------------------------


def test_spec_reads_the_contract_keys_and_is_named_by_its_folder(tmp_path):
    folder = write_metadata(tmp_path / "sr2x", scale=2, reach=40, size_multiple=16, inputs={"quantization": 130})
    spec = read_spec(folder)
    assert (spec.name, spec.scale, spec.reach, spec.size_multiple) == ("sr2x", 2, 40, 16)
    assert dict(spec.inputs) == {"quantization": 130}
    with pytest.raises(TypeError):
        spec.inputs["other"] = 1  # frozen, inputs included


def test_spec_of_metadata_written_before_the_contract_uses_the_legacy_keys_and_defaults(tmp_path):
    spec = read_spec(write_metadata(tmp_path / "old", receptive_field_reach=29, architecture="dejpeg"))
    assert (spec.scale, spec.reach, spec.size_multiple, dict(spec.inputs)) == (1, 29, 4, {})


def test_auto_step_scale_is_read_interpolated_and_clamped_to_its_end_points(tmp_path):
    spec = read_spec(write_metadata(tmp_path / "m", reach=42, inputs={"quantization": 130},
                                    auto_step_scale=[[70, 1.0], [90, 0.5], [95, 0.35]]))
    assert spec.auto_step_scale == ((70, 1.0), (90, 0.5), (95, 0.35))
    assert [spec.step_factor(q) for q in (10, 70, 80, 90, 95, 100)] == pytest.approx([1, 1, 0.75, 0.5, 0.35, 0.35])
    assert read_spec(write_metadata(tmp_path / "again", **spec.metadata())).auto_step_scale == spec.auto_step_scale
    assert ModelSpec("plain", reach=1).step_factor(95) == 1.0 and "auto_step_scale" not in ModelSpec("plain", reach=1).metadata()


@pytest.mark.parametrize("points", [[[90, 0.5], [80, 0.7]], [[80, 0.7], [80, 0.5]], [[90, 0]], [[101, 0.5]], [[90.5, 0.5]], [90, 0.5], [[90, "0.5"]]])
def test_an_auto_step_scale_that_is_not_ascending_qualities_and_positive_factors_is_refused(tmp_path, points):
    with pytest.raises(ModelLoadError, match="auto_step_scale must be"):
        read_spec(write_metadata(tmp_path / "bad", reach=3, auto_step_scale=points))


def test_spec_without_a_reach_or_without_metadata_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ModelLoadError, match="receptive-field reach"):
        read_spec(write_metadata(tmp_path / "noreach", scale=1))
    (tmp_path / "bare").mkdir()
    with pytest.raises(ModelLoadError, match=r'no metadata.json.*\{"reach": 29\}'):
        read_spec(tmp_path / "bare")
    with pytest.raises(ModelLoadError, match="scale must be an integer >= 1"):
        read_spec(write_metadata(tmp_path / "bad", reach=3, scale=0))
    with pytest.raises(ModelLoadError, match="needs a length >= 1"):
        read_spec(write_metadata(tmp_path / "badinput", reach=3, inputs={"quantization": 0}))


def test_export_writes_the_contract_keys_the_server_reads(tmp_path):
    from enhancer.training.export import export_saved_model
    from enhancer.training.network import build_dejpeg

    out = export_saved_model(build_dejpeg(4, 8, 1), tmp_path / "tiny", {"note": "test"}, reach=17)
    meta = json.loads((out / "metadata.json").read_text())
    assert {k: meta[k] for k in ("scale", "reach", "size_multiple", "inputs", "note")} == {
        "scale": 1, "reach": 17, "size_multiple": 4, "inputs": {}, "note": "test",
    }  # fmt: skip
    assert read_spec(out) == ModelSpec(name="tiny", reach=17, scale=1, size_multiple=4)


@pytest.mark.parametrize(
    ("tile_size", "overlap", "message"),
    [
        (130, 32, r"ENHANCER_TILE_SIZE \(130\) must be a multiple of 4, the size multiple of model 'dejpeg'"),
        (576, 16, r"ENHANCER_TILE_OVERLAP \(16\) is below the receptive-field reach of model 'dejpeg' \(29 px\)"),
    ],
)
def test_tile_settings_are_checked_against_the_shipped_model_s_spec(tile_size, overlap, message):
    spec = read_spec(MODEL_DIR)
    spec.check_tiling(576, 32)  # the defaults fit
    spec.check_tiling(576, 29)  # exactly the reach is enough
    with pytest.raises(ValueError, match=message):
        spec.check_tiling(tile_size, overlap)


class FakeModel:
    """Keeps the model contract without running anything."""

    def __init__(self, name: str, scale: int = 1, reach: int = 29, size_multiple: int = 4, inputs=None):
        self.spec = ModelSpec(name=name, reach=reach, scale=scale, size_multiple=size_multiple, inputs=inputs or {})
        self.device, self.device_kind, self.precision = "CPU (fake)", "cpu", "float32"
        self.warmed_shapes: list[tuple[int, int]] = []

    def forward(self, batch, inputs=None):
        s = self.spec.scale
        return np.repeat(np.repeat(batch, s, axis=1), s, axis=2)

    def warm_up(self, shapes, max_batch_size):
        self.warmed_shapes = list(shapes)
        return 0.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tile_size": 130}, "multiple of 4"),
        ({"tile_overlap": 16}, r"ENHANCER_TILE_OVERLAP \(16\) is below the receptive-field reach of model 'm' \(29 px\)"),
    ],
)
def test_start_up_refuses_tile_settings_a_model_cannot_be_served_with(overrides, message):
    settings = Settings(_env_file=None, **{"tile_size": 576, "tile_overlap": 32, **overrides})
    runtime = Runtime(settings, Metrics(), models=ModelRegistry([FakeModel("m")]))
    with pytest.raises(ValueError, match=message):
        asyncio.run(runtime.start())
    assert runtime.state is ServingState.FAILED


@pytest.mark.parametrize("buckets", [True, False])
def test_every_model_is_warmed_up_with_the_tile_shapes_of_its_own_size_multiple_and_tile_size(buckets):
    from enhancer import tiling

    a, b = FakeModel("a"), FakeModel("b", scale=2, size_multiple=16)
    settings = Settings(_env_file=None, tile_size=256, tile_overlap=32, max_batch_delay_ms=1, tile_buckets=buckets)
    runtime = Runtime(settings, Metrics(), models=ModelRegistry([a, b]))

    async def start_and_stop():
        await runtime.start()
        await runtime.wait_ready()
        state = runtime.state
        await runtime.stop()
        return state

    assert asyncio.run(start_and_stop()) is ServingState.READY
    if buckets:
        assert a.warmed_shapes == tiling.bucket_shapes(256, 4)
        assert b.warmed_shapes == tiling.bucket_shapes(128, 16) != a.warmed_shapes  # an enlarging model: half the edge
    else:  # exact shapes: the largest tile of each
        assert (a.warmed_shapes, b.warmed_shapes) == ([(256, 256)], [(128, 128)])
    assert runtime.warmed == ["a", "b"]


# --- the registry ---------------------------------------------------------------------------------


def test_default_model_rules():
    one = {"x": ModelSpec("x", reach=1, scale=2)}
    assert choose_default(one, None) == "x"  # the only model, whatever its scale
    mixed = {"sr2": ModelSpec("sr2", reach=1, scale=2), "dejpeg": ModelSpec("dejpeg", reach=1), "sr4": ModelSpec("sr4", reach=1, scale=4)}
    assert choose_default(mixed, None) == "dejpeg"  # the only scale-1 model
    assert choose_default(mixed, "sr4") == "sr4"
    with pytest.raises(ModelLoadError, match="ENHANCER_DEFAULT_MODEL is 'nope', which is not served; served: sr2, dejpeg, sr4"):
        choose_default(mixed, "nope")
    two = {"a": ModelSpec("a", reach=1), "b": ModelSpec("b", reach=1)}
    with pytest.raises(ModelLoadError, match="2 models are served .* set ENHANCER_DEFAULT_MODEL"):
        choose_default(two, None)


def test_registry_selects_by_name_and_by_scale():
    registry = ModelRegistry([FakeModel("dejpeg"), FakeModel("sr2", scale=2), FakeModel("sr4", scale=4), FakeModel("plain")], "dejpeg")
    assert registry.select(None) is registry["dejpeg"]
    assert registry.select("sr2") is registry["sr2"]
    assert list(registry) == ["dejpeg", "sr2", "sr4", "plain"] and len(registry) == 4
    with pytest.raises(UnknownModelError, match="unknown model 'sr3'; this server serves: dejpeg, sr2, sr4, plain"):
        registry.select("sr3")
    assert registry.for_scale(1) is registry["dejpeg"]  # the default wins among scale-1 models
    assert registry.for_scale(4) is registry["sr4"]
    with pytest.raises(UnknownModelError, match=r"serves no model with scale 3; the scales it serves are 1, 2, 4 \(models: "):
        registry.for_scale(3)
    other_default = ModelRegistry([FakeModel("a"), FakeModel("b"), FakeModel("sr2", scale=2)], "sr2")
    with pytest.raises(UnknownModelError, match="several models have scale 1 .a, b.; name one"):
        other_default.for_scale(1)


def test_registry_refuses_duplicate_names_and_models_with_inputs_it_cannot_make():
    with pytest.raises(ModelLoadError, match="two models are named 'a'"):
        ModelRegistry([FakeModel("a"), FakeModel("a")])
    with pytest.raises(ModelLoadError, match="declares the extra input.s. depth_map, which this server cannot compute"):
        ModelRegistry([FakeModel("q", inputs={"depth_map": 130})])


def _model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"")
    return path


def test_model_dirs_the_model_dir_and_the_upscalers_present(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    x2 = _model_folder(tmp_path / "weights" / "upscale-x2")  # trained; upscale-x4 not (yet)
    if not (MODEL_DIR.parent / "upscale-x4" / "saved_model.pb").is_file():
        with caplog.at_level("INFO", logger="enhancer.models.registry"):
            assert model_dirs(Settings(_env_file=None, model_dir=MODEL_DIR)) == {"dejpeg": MODEL_DIR, "upscale-x2": x2}
        assert "no upscaling model at" in caplog.text and "upscale-x4" in caplog.text
    # named explicitly: each must be there
    other = _model_folder(tmp_path / "sr" / "sharp-x4")
    settings = Settings(_env_file=None, model_dir=MODEL_DIR, upscale_model_dirs=[other, x2])
    assert list(model_dirs(settings)) == ["dejpeg", "sharp-x4", "upscale-x2"]
    with pytest.raises(ModelLoadError, match="no SavedModel at .*missing-x2 .*named in ENHANCER_UPSCALE_MODEL_DIRS"):
        model_dirs(Settings(_env_file=None, model_dir=MODEL_DIR, upscale_model_dirs=[tmp_path / "missing-x2"]))
    with pytest.raises(ModelLoadError, match="two model folders are named 'dejpeg'"):
        model_dirs(Settings(_env_file=None, model_dir=MODEL_DIR, upscale_model_dirs=[_model_folder(tmp_path / "b" / "dejpeg")]))


def test_model_dirs_one_folder_or_every_folder_under_models_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    alone = Settings(_env_file=None, model_dir=MODEL_DIR, upscale_model_dirs="none")
    assert model_dirs(alone) == {"dejpeg": MODEL_DIR}
    with pytest.raises(ModelLoadError, match="no SavedModel at .*missing"):
        model_dirs(Settings(_env_file=None, model_dir=tmp_path / "missing"))

    root = tmp_path / "models"
    for name in ("b", "a", ".hidden", "c.tmp"):
        _model_folder(root / name)
    (root / "notes").mkdir()  # not a model: no saved_model.pb
    assert model_dirs(Settings(_env_file=None, models_dir=root)) == {"a": root / "a", "b": root / "b"}
    monkeypatch.setenv("ENHANCER_MODELS_DIR", "models")  # relative: found in the working directory
    assert list(model_dirs(Settings(_env_file=None))) == ["a", "b"]
    # ENHANCER_MODELS_DIR wins over an explicit ENHANCER_MODEL_DIR (the Docker image sets that one)
    assert list(model_dirs(Settings(_env_file=None, model_dir=MODEL_DIR))) == ["a", "b"]
    shutil.rmtree(root / "a"), shutil.rmtree(root / "b")
    with pytest.raises(ModelLoadError, match="no SavedModel folders in"):
        model_dirs(Settings(_env_file=None))


def test_models_dir_and_default_model_are_read_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ENHANCER_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("ENHANCER_DEFAULT_MODEL", "dejpeg")
    settings = Settings(_env_file=None)
    assert (settings.models_dir, settings.default_model) == (tmp_path, "dejpeg")
    monkeypatch.setenv("ENHANCER_MODELS_DIR", "")  # as in .env.example: unset
    assert Settings(_env_file=None).models_dir is None


# --- extra model inputs ---------------------------------------------------------------------------


def _decoded():
    return imaging.decode(encode_bgr(photo_like(24, 40), ".png")).info


def test_a_pixels_only_model_gets_no_extra_inputs():
    assert conditioning.model_inputs(ModelSpec("dejpeg", reach=29), _decoded()) == {}


def test_an_unknown_input_is_refused_by_name():
    spec = ModelSpec("q", reach=29, inputs={"depth_map": 130})
    with pytest.raises(ValueError, match="declares the extra input.s. depth_map, which this server cannot compute .it knows: quantization."):
        conditioning.model_inputs(spec, _decoded())


def test_a_known_input_is_built_per_image_and_checked_against_the_declared_length(monkeypatch):
    image = _decoded()
    monkeypatch.setitem(conditioning.BUILDERS, "size", lambda im, strength, spec: [im.height, im.width])
    vectors = conditioning.model_inputs(ModelSpec("m", reach=1, inputs={"size": 2}), image)
    assert list(vectors) == ["size"] and vectors["size"].dtype == np.float32
    assert vectors["size"].tolist() == [24.0, 40.0]
    with pytest.raises(ValueError, match="returned shape .2,.; model 'm' declares a vector of length 3"):
        conditioning.model_inputs(ModelSpec("m", reach=1, inputs={"size": 3}), image)


# --- the runner with an extra input (a real SavedModel) ------------------------------------------


@pytest.fixture(scope="module")
def conditioned_model_dir(tmp_path_factory):
    """A SavedModel taking `images` and a per-image `offset` [N, 3]: enhanced = images + offset."""
    tf = pytest.importorskip("tensorflow")

    class Offset(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None, None, 3], tf.float32, name="images"),
                tf.TensorSpec([None, 3], tf.float32, name="offset"),
            ]
        )
        def serve(self, images, offset):
            return {"enhanced": images + offset[:, None, None, :]}

    folder = tmp_path_factory.mktemp("conditioned") / "offset"
    module = Offset()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    write_metadata(folder, reach=0, inputs={"offset": 3})
    return folder


def _device():
    from enhancer.models.saved_model import configure_device

    return configure_device(Settings(_env_file=None))


def test_the_runner_passes_each_extra_input_to_the_signature_by_name(conditioned_model_dir):
    from enhancer.models.saved_model import SavedModelRunner

    runner = SavedModelRunner(conditioned_model_dir, device=_device())
    assert dict(runner.spec.inputs) == {"offset": 3}
    batch = np.zeros((2, 8, 4, 3), np.float32)
    offsets = np.array([[0.1, 0.2, 0.3], [0.5, 0.6, 0.7]], np.float32)
    out = runner.forward(batch, {"offset": offsets})
    np.testing.assert_allclose(out[0], np.broadcast_to(offsets[0], (8, 4, 3)))
    np.testing.assert_allclose(out[1], np.broadcast_to(offsets[1], (8, 4, 3)))
    with pytest.raises(ValueError, match=r"takes the extra inputs \['offset'\], got \[\]"):
        runner.forward(batch)
    with pytest.raises(ValueError, match=r"must be shaped \[2, 3\]"):
        runner.forward(batch, {"offset": offsets[:1]})
    runner.warm_up([(8, 8)], max_batch_size=2)  # warm-up feeds the extra input too


def test_the_runner_refuses_metadata_that_does_not_match_the_signature(conditioned_model_dir, tmp_path):
    from enhancer.models.saved_model import SavedModelRunner

    copy = shutil.copytree(conditioned_model_dir, tmp_path / "offset")
    write_metadata(copy, reach=0)  # forgets to declare `offset`
    with pytest.raises(ModelLoadError, match=r"the signature takes inputs \['images', 'offset'\] but metadata.json declares \['images'\]"):
        SavedModelRunner(copy, device=_device())
