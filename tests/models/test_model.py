"""The SavedModel runner on the committed weights: contract, batch order, warm-up, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import photo_like

from enhancer import tiling
from enhancer.models.contract import ModelLoadError
from enhancer.models.saved_model import Device, SavedModelRunner


def test_forward_keeps_shape_dtype_and_range(saved_model):
    batch = np.stack([photo_like(37, 53, seed=s) for s in range(3)]).astype(np.float32) / 255
    out = saved_model.forward(batch)
    assert out.shape == batch.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_batch_results_are_in_input_order(saved_model):
    images = [photo_like(64, 64, seed=s).astype(np.float32) / 255 for s in range(3)]
    together = saved_model.forward(np.stack(images))
    for i, image in enumerate(images):
        np.testing.assert_allclose(together[i], saved_model.forward(image[None])[0], atol=1e-5)


def test_forward_rejects_a_wrong_layout(saved_model):
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        saved_model.forward(np.zeros((8, 8, 3), np.float32))


def test_warm_up_runs_every_bucket_shape_at_both_batch_sizes(saved_model, monkeypatch):
    seen = []
    real_forward = saved_model.forward
    monkeypatch.setattr(
        saved_model, "forward", lambda batch, inputs=None: seen.append(batch.shape) or real_forward(batch, inputs)
    )
    shapes = tiling.bucket_shapes(96, saved_model.spec.size_multiple)
    saved_model.warm_up(shapes, max_batch_size=3)
    assert sorted(seen) == sorted((n, h, w, 3) for h, w in shapes for n in (1, 3))


def test_device_is_reported(saved_model):
    assert saved_model.device.startswith(("CPU", "GPU"))


def test_missing_model_dir_names_the_fix(tmp_path):
    with pytest.raises(ModelLoadError, match="ENHANCER_MODEL_DIR"):
        SavedModelRunner(tmp_path / "nope", device=Device("cpu", "CPU", "float32"))


def test_the_shipped_model_keeps_the_contract(saved_model):
    spec = saved_model.spec
    # its metadata predates the contract's key names: the legacy ones are read
    assert (spec.name, spec.scale, spec.reach, spec.size_multiple, dict(spec.inputs)) == ("dejpeg", 1, 29, 4, {})
