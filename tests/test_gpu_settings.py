"""GPU speed settings, tested where a CPU can: the device defaults, XLA, precision, start-up log.

- Tile/batch defaults per device are a pure function of the device and of which settings were set.
- The XLA path really compiles (HLO exists) and gives the plain path's output on a model that is
  not the identity; batches are padded to the sizes warm-up compiled.
- mixed_float16 switches TensorFlow's mixed precision rewrite on and reports what it will do on the
  devices present (float32 on a CPU without AMX-FP16; float16 convolutions on a Tensor Core GPU).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from helpers import MODEL_DIR
from pydantic import ValidationError

from enhancer.config import GPU_DEFAULTS, Settings, device_defaults
from enhancer.models.contract import ModelSpec


# ---------------------------------------------------------------------------- device defaults
def test_cpu_defaults_are_the_settings_defaults():
    assert device_defaults("cpu") == {
        "tile_size": Settings.model_fields["tile_size"].default,
        "max_batch_size": Settings.model_fields["max_batch_size"].default,
        "batches_in_flight": Settings.model_fields["batches_in_flight"].default,
        "solo_tile_size": Settings.model_fields["solo_tile_size"].default,
    }


def test_gpu_defaults_are_larger_tiles_and_batches():
    gpu, cpu = device_defaults("gpu"), device_defaults("cpu")
    assert gpu == GPU_DEFAULTS
    assert gpu["tile_size"] > cpu["tile_size"] and gpu["max_batch_size"] > cpu["max_batch_size"]
    assert (cpu["batches_in_flight"], gpu["batches_in_flight"]) == (1, 2)


def test_explicit_settings_are_not_defaulted():
    assert device_defaults("gpu", {"tile_size", "batches_in_flight", "solo_tile_size"}) == {
        "max_batch_size": GPU_DEFAULTS["max_batch_size"]
    }
    assert device_defaults("gpu", {"tile_size", "max_batch_size", "batches_in_flight", "solo_tile_size", "xla"}) == {}


def test_unknown_device_kind_is_an_error():
    with pytest.raises(ValueError, match="cpu' or 'gpu"):
        device_defaults("tpu")


def test_for_device_fills_only_what_the_environment_left_unset(monkeypatch):
    monkeypatch.setenv("ENHANCER_MAX_BATCH_SIZE", "2")
    settings = Settings(_env_file=None)
    on_gpu = settings.for_device("gpu")
    assert (on_gpu.tile_size, on_gpu.max_batch_size) == (GPU_DEFAULTS["tile_size"], 2)
    on_cpu = settings.for_device("cpu")
    assert (on_cpu.tile_size, on_cpu.max_batch_size) == (576, 2)
    assert (settings.tile_size, settings.max_batch_size) == (576, 2)  # the original is unchanged


def test_for_device_keeps_everything_explicit():
    settings = Settings(_env_file=None, tile_size=256, max_batch_size=3, batches_in_flight=1, solo_tile_size=0)
    assert settings.for_device("gpu") is settings


def test_device_defaults_do_not_count_as_set():
    resolved = Settings(_env_file=None, tile_size=256).for_device("gpu")
    assert resolved.max_batch_size == GPU_DEFAULTS["max_batch_size"]
    assert resolved.model_fields_set == {"tile_size"}  # the device chose the rest
    assert resolved.for_device("cpu").max_batch_size == 1  # so a later resolution may choose again


def test_start_up_line_names_device_precision_and_batch_settings():
    line = Settings(_env_file=None, tile_size=256).for_device("gpu").describe_inference(
        "gpu", "GPU (/physical_device:GPU:0)", "mixed_float16 (float16 convolutions)"
    )
    assert "GPU (/physical_device:GPU:0)" in line
    assert "precision mixed_float16 (float16 convolutions)" in line
    assert f"max_batch_size {GPU_DEFAULTS['max_batch_size']} (GPU default)" in line
    assert "batches_in_flight 2 (GPU default)" in line
    assert "tile_size 256 (set)" in line
    assert "XLA off" in line


def test_speed_settings_parse_from_the_environment(monkeypatch):
    settings = Settings(_env_file=None)
    assert (settings.gpu_memory_growth, settings.precision, settings.xla) == (True, "auto", False)
    monkeypatch.setenv("ENHANCER_GPU_MEMORY_GROWTH", "false")
    monkeypatch.setenv("ENHANCER_PRECISION", "mixed_float16")
    monkeypatch.setenv("ENHANCER_XLA", "true")
    settings = Settings(_env_file=None)
    assert (settings.gpu_memory_growth, settings.precision, settings.xla) == (False, "mixed_float16", True)
    monkeypatch.setenv("ENHANCER_PRECISION", "float8")
    with pytest.raises(ValidationError, match="precision"):
        Settings(_env_file=None)


# ------------------------------------------------------------------------ the runner (TensorFlow)
tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def perturbed_model_dir(tmp_path_factory):
    """A small net with random weights, exported by the project's own export code.

    Small, so XLA compiles its shapes quickly on a CPU; random, so every layer moves the answer (an
    untrained net is exactly the identity, its last layer starting at zero, and on the identity
    any two paths agree trivially).
    """
    from enhancer.training.export import export_saved_model
    from enhancer.training.network import build_dejpeg

    rng = np.random.default_rng(0)
    net = build_dejpeg(half_channels=8, quarter_channels=16, quarter_blocks=1)
    net.set_weights([rng.normal(0, 0.1, w.shape).astype(np.float32) for w in net.get_weights()])
    return export_saved_model(net, tmp_path_factory.mktemp("perturbed") / "model")


def _runner(model_dir, *, xla: bool = False, **settings):
    from enhancer.models.saved_model import SavedModelRunner, configure_device

    return SavedModelRunner(model_dir, device=configure_device(Settings(_env_file=None, **settings)), xla=xla)


@pytest.fixture(scope="module")
def plain_runner(perturbed_model_dir):
    return _runner(perturbed_model_dir, precision="float32")


@pytest.fixture(scope="module")
def xla_runner(perturbed_model_dir):
    return _runner(perturbed_model_dir, xla=True, precision="float32")


def _batch(shape, seed=1):
    return np.random.default_rng(seed).uniform(0.0, 1.0, shape).astype(np.float32)


def test_device_kind_is_what_tensorflow_sees(plain_runner):
    expected = "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    assert plain_runner.device_kind == expected
    assert plain_runner.precision == "float32 (set)"


def test_auto_is_mixed_float16_on_a_gpu_and_float32_on_this_cpu():
    from enhancer.models import saved_model as model_module
    from enhancer.models.saved_model import configure_device

    try:
        chosen = configure_device(Settings(_env_file=None, precision="auto")).precision
    finally:
        model_module._set_precision("float32", [])  # the switch is process-wide
    if tf.config.list_physical_devices("GPU"):
        assert chosen.startswith(("mixed_float16 (auto: Tensor Core GPU", "float32 (auto: the GPU has no Tensor Cores"))
    else:  # resolved after this process loaded TensorFlow: never bfloat16 (enhancer.precision.prepare)
        assert chosen.startswith("float32 (auto: ")


@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (1, 13, 9, 3)])
def test_xla_output_matches_the_plain_signature(plain_runner, xla_runner, shape):
    x = _batch(shape)
    plain = plain_runner.forward(x)
    assert np.abs(plain - x).mean() > 0.01  # the model changes the image: the comparison means something
    compiled = xla_runner.forward(x)
    assert compiled.shape == shape
    np.testing.assert_allclose(compiled, plain, atol=1e-5)
    hlo = xla_runner._run.experimental_get_compiler_ir(tf.constant(x))(stage="hlo")
    assert "HloModule" in hlo  # it really is an XLA computation


def test_xla_pads_batches_to_the_warmed_up_sizes(plain_runner, xla_runner, monkeypatch):
    xla_runner.warm_up([(32, 32)], max_batch_size=4)
    seen = []
    run = xla_runner._run
    monkeypatch.setattr(xla_runner, "_run", lambda images, **extra: seen.append(images.shape[0]) or run(images, **extra))
    x = _batch((3, 32, 32, 3), seed=2)
    out = xla_runner.forward(x)
    assert seen == [4]  # 3 tiles ran as a compiled batch of 4, not a fresh compile for 3
    assert out.shape == x.shape
    np.testing.assert_allclose(out, plain_runner.forward(x), atol=1e-5)
    xla_runner.forward(_batch((1, 32, 32, 3)))
    assert seen == [4, 1]


def test_plain_runner_never_pads(plain_runner, monkeypatch):
    plain_runner.warm_up([(16, 16)], max_batch_size=4)
    seen = []
    run = plain_runner._run
    monkeypatch.setattr(plain_runner, "_run", lambda images, **extra: seen.append(images.shape[0]) or run(images, **extra))
    plain_runner.forward(_batch((3, 16, 16, 3)))
    assert seen == [3]


def test_mixed_float16_reports_what_the_devices_allow(perturbed_model_dir, plain_runner):
    from enhancer.models import saved_model as model_module

    tensor_core_gpus = [
        gpu
        for gpu in tf.config.list_physical_devices("GPU")
        if tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability") or (0, 0)) >= (7, 0)
    ]
    try:
        runner = _runner(perturbed_model_dir, precision="mixed_float16")
        assert tf.config.optimizer.get_experimental_options().get("auto_mixed_precision") is True
        x = _batch((2, 32, 32, 3), seed=3)
        out = runner.forward(x)
        reference = plain_runner.forward(x)
        if tensor_core_gpus:
            assert runner.precision.startswith("mixed_float16")
            np.testing.assert_allclose(out, reference, atol=2e-2)  # float16 rounding
        else:
            assert runner.precision.startswith("float32 (mixed_float16 asked for")
            np.testing.assert_allclose(out, reference, atol=1e-6)
    finally:
        model_module._set_precision("float32", [])  # the switch is process-wide
    assert tf.config.optimizer.get_experimental_options().get("auto_mixed_precision") is False


def test_unknown_precision_is_refused():
    from enhancer.models.saved_model import configure_device

    unchecked = Settings.model_construct(**{**Settings(_env_file=None).model_dump(), "precision": "bfloat8"})
    with pytest.raises(ValueError, match="precision"):
        configure_device(unchecked)


def test_memory_growth_is_on_for_every_gpu(plain_runner):
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        pytest.skip("no GPU visible to TensorFlow")
    assert all(tf.config.experimental.get_memory_growth(gpu) for gpu in gpus)


# ------------------------------------------------------------------------------- start-up wiring
class _FakeModel:
    """Stands in for the runner: reports a device kind, runs nothing."""

    spec = ModelSpec(name="fake", reach=29)

    def __init__(self, device_kind: str):
        self.device_kind = device_kind
        self.device = f"{device_kind.upper()} (fake)"
        self.precision = "float32"

    def forward(self, batch, inputs=None):
        return batch

    def warm_up(self, shapes, max_batch_size):
        return 0.0


@pytest.mark.parametrize("device_kind", ["gpu", "cpu"])
def test_server_start_up_picks_the_device_defaults_and_logs_them(device_kind, caplog):
    import asyncio

    from enhancer.metrics import Metrics
    from enhancer.models.registry import ModelRegistry
    from enhancer.runtime import Runtime

    settings = Settings(_env_file=None, model_dir=MODEL_DIR, max_batch_delay_ms=1)
    runtime = Runtime(settings, Metrics(), models=ModelRegistry([_FakeModel(device_kind)]))

    async def start_and_stop():
        await runtime.start()
        await runtime.wait_ready()
        await runtime.stop()

    with caplog.at_level(logging.INFO, logger="enhancer.runtime"):
        asyncio.run(start_and_stop())
    expected = device_defaults(device_kind)
    assert runtime.settings.tile_size == expected["tile_size"]
    assert runtime.settings.max_batch_size == expected["max_batch_size"]
    assert runtime.batcher._max_batch == expected["max_batch_size"]
    assert runtime.service.pipeline.tile_size == expected["tile_size"]
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("inference on ")]
    assert f"inference on {device_kind.upper()} (fake)" in line
    assert f"max_batch_size {expected['max_batch_size']} ({device_kind.upper()} default)" in line
    assert f"tile_size {expected['tile_size']} ({device_kind.upper()} default)" in line
    assert "precision float32" in line
