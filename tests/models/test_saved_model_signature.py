"""The shipped SavedModel keeps the one model contract, the one TensorFlow Serving relies on.

`serving_default`: `images` float32 [N, H, W, 3] with batch, height and width all dynamic ->
`enhanced` float32 of the same shape. Checked two ways: as TensorFlow loads it, and as
`saved_model_cli` (the tool TF Serving users inspect a model with) reports it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import MODEL_DIR

tf = pytest.importorskip("tensorflow")



@pytest.fixture(scope="module")
def signature():
    loaded = tf.saved_model.load(str(MODEL_DIR))
    assert "serving_default" in loaded.signatures, list(loaded.signatures)
    # keep `loaded` alive with the signature: its variables belong to it
    return loaded, loaded.signatures["serving_default"]


def test_input_is_float32_images_with_dynamic_batch_height_width(signature):
    _, sig = signature
    args, kwargs = sig.structured_input_signature
    assert args == ()
    assert list(kwargs) == ["images"]
    spec = kwargs["images"]
    assert spec.dtype == tf.float32
    assert spec.shape.as_list() == [None, None, None, 3]


def test_output_is_float32_enhanced_with_dynamic_shape(signature):
    _, sig = signature
    outputs = sig.structured_outputs
    assert list(outputs) == ["enhanced"]
    spec = outputs["enhanced"]
    assert spec.dtype == tf.float32
    assert spec.shape.rank == 4
    assert spec.shape.as_list()[:3] == [None, None, None]


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (2, 5, 7, 3), (1, 37, 20, 3)])
def test_any_batch_and_size_comes_back_in_the_same_shape_in_range(signature, shape):
    # sizes that are not multiples of the net's stride: padding happens inside the signature
    _, sig = signature
    x = np.random.default_rng(0).uniform(0.0, 1.0, shape).astype(np.float32)
    y = sig(images=tf.constant(x))["enhanced"].numpy()
    assert y.shape == shape
    assert y.dtype == np.float32
    assert y.min() >= 0.0 and y.max() <= 1.0


def _saved_model_cli() -> str:
    # the console script the tensorflow package installs next to this interpreter (the venv)
    beside = Path(sys.executable).with_name("saved_model_cli")
    found = str(beside) if beside.is_file() else shutil.which("saved_model_cli")
    if found is None:
        pytest.fail("saved_model_cli not found; it is installed by the tensorflow package")
    return found


def test_saved_model_cli_reports_the_serving_signature():
    result = subprocess.run(
        [
            _saved_model_cli(),
            "show",
            "--dir",
            str(MODEL_DIR),
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    inputs, _, outputs = out.partition("contains the following output(s):")
    assert "inputs['images'] tensor_info:" in inputs
    assert "dtype: DT_FLOAT" in inputs
    assert "shape: (-1, -1, -1, 3)" in inputs
    assert "outputs['enhanced'] tensor_info:" in outputs
    assert "dtype: DT_FLOAT" in outputs
    assert "shape: (-1, -1, -1, 3)" in outputs
    # the method TF Serving's REST `:predict` and gRPC Predict dispatch to
    assert "Method name is: tensorflow/serving/predict" in out
