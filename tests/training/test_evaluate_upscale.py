"""`enhancer evaluate --scale 2`: the metrics on constructed arrays, the small inputs and the
model path, and one whole evaluation of an exported, untrained upscaler (which computes "restore,
then TensorFlow's bicubic") on two small synthetic images, through the CLI."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from helpers import REPO_ROOT

from enhancer.training.evaluate_upscale import (
    METHODS,
    VARIANTS,
    ground_truth,
    luma,
    small_file,
    to_8bit,
    y_psnr,
    y_ssim,
)

RESTORER = REPO_ROOT / "weights" / "dejpeg-q"
#: Two images whose sides are not all multiples of 2 (the ground truth is cropped to them).
SYNTHETIC = {"synthetic-shapes": ("photo", (99, 130)), "synthetic-texture": ("texture", (112, 101))}


def _synthetic(seed: int, shape: tuple[int, int]) -> np.ndarray:
    """A BGR image with smooth gradients, hard-edged shapes and fine stripes."""
    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack([x / w, y / h, 0.5 + 0.4 * np.sin(x / 3.0 + y / 5.0)], axis=-1) * 200 + 20
    for _ in range(6):
        y0, x0 = rng.integers(0, h - 10), rng.integers(0, w - 10)
        image[y0 : y0 + rng.integers(5, 30), x0 : x0 + rng.integers(5, 30)] = rng.integers(0, 256, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def upscaler(tmp_path_factory):
    """An exported, untrained x2 upscaler (small head)."""
    from enhancer.training.export import export_saved_model
    from enhancer.training.network import build_upscaler

    # reach given, not measured (that takes half a minute here): each test image is one tile, whose
    # context margin is set by the image's side, so the overlap it would set changes nothing
    return export_saved_model(build_upscaler(2, head_channels=8, head_blocks=1), tmp_path_factory.mktemp("m") / "up-x2", reach=48)


@pytest.fixture(scope="module")
def testset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("testset")
    for seed, (name, (_, shape)) in enumerate(SYNTHETIC.items()):
        cv2.imwrite(str(folder / f"{name}.png"), _synthetic(seed, shape))
    (folder / "kinds.json").write_text(json.dumps({name: kind for name, (kind, _) in SYNTHETIC.items()}))
    return folder


@pytest.fixture(scope="module")
def evaluated(upscaler, testset):
    """The CLI's run with its default output folder (MODEL/eval, which also rewrites the card)."""
    from enhancer.cli import main

    assert main(["evaluate", "--scale", "2", "--model", str(upscaler), "--restorer", str(RESTORER), "--testset", str(testset)]) == 0
    return json.loads((upscaler / "eval" / "evaluation.json").read_text())


# --- metrics -----------------------------------------------------------------------------------------
def test_luma_is_bt601_in_studio_range():
    assert luma(np.zeros((1, 1, 3)))[0, 0] == pytest.approx(16.0)
    assert luma(np.ones((1, 1, 3)))[0, 0] == pytest.approx(235.0)
    assert luma(np.array([[[1.0, 0, 0]]]))[0, 0] == pytest.approx(16.0 + 65.481)


def test_y_psnr_of_a_known_luma_difference():
    grey = np.full((20, 24, 3), 0.5)
    shifted = grey + 10.0 / 219.0  # every channel up by the same amount: luma up by exactly 10
    assert y_psnr(grey, shifted, 0) == pytest.approx(20 * math.log10(255 / 10))
    assert y_psnr(grey, shifted, 2) == pytest.approx(20 * math.log10(255 / 10))
    assert y_psnr(grey, grey, 2) == math.inf


def test_y_psnr_crops_scale_pixels_at_each_border():
    clean = np.zeros((20, 20, 3))
    framed = clean.copy()
    framed[:2], framed[-2:], framed[:, :2], framed[:, -2:] = 1, 1, 1, 1  # a 2 px white frame
    assert y_psnr(clean, framed, 2) == math.inf  # the frame is cropped away
    assert math.isfinite(y_psnr(clean, framed, 1))
    dotted = clean.copy()
    dotted[2, 2] = 1  # the first pixel inside the crop: luma error 219 over 16 x 16 pixels
    assert y_psnr(clean, dotted, 2) == pytest.approx(10 * math.log10(255**2 * 256 / 219**2))


def test_y_ssim_is_one_for_equal_images_and_lower_for_noise():
    image = np.random.default_rng(1).uniform(0, 1, (40, 40, 3))
    noisy = np.clip(image + np.random.default_rng(2).normal(0, 0.1, image.shape), 0, 1)
    assert y_ssim(image, image, 2) == pytest.approx(1.0)
    assert y_ssim(image, noisy, 2) < 0.95


def test_to_8bit_rounds_and_clips():
    values = np.array([-0.2, 0.0, 0.5 / 255, 1.49 / 255, 0.5, 1.3])
    assert np.array_equal(to_8bit(values) * 255, np.array([0, 0, 1, 1, 128, 255], np.float32))


# --- inputs --------------------------------------------------------------------------------------------
def test_small_inputs_are_files_a_scale_smaller_and_the_model_is_told_their_tables(upscaler):
    from enhancer import imaging
    from enhancer.imaging.jpeg import ijg_table
    from enhancer.models.contract import QUANTIZATION_KEY
    from enhancer.training.evaluate import file_quantization
    from enhancer.training.evaluate_upscale import ServedModel

    truth = ground_truth(_synthetic(0, (99, 130)), 2)
    assert truth.shape == (98, 130, 3)
    model = ServedModel(upscaler)
    for variant, quality in VARIANTS.items():
        data = small_file(truth, 2, quality)
        decoded = imaging.decode(data)
        assert decoded.pixels.shape == (49, 65, 3)
        assert decoded.info.source_format == ("png" if quality is None else "jpeg")
        told = model.pipeline.prepare(data, model.spec).job.inputs[QUANTIZATION_KEY]  # what the server would send
        np.testing.assert_array_equal(told, file_quantization(data))
        if quality is None:
            assert not told.any(), "a PNG takes the blind path"
        else:
            np.testing.assert_array_equal(told[:64], ijg_table(quality).ravel())


def test_untrained_upscaler_through_the_pipeline_is_bicubic_of_the_input(upscaler):
    """Untrained, the restorer is the identity and the head adds zero: the answer is TensorFlow's
    bicubic enlargement, twice the size (away from the borders, where the tiler's mirrored context
    and TensorFlow's edge handling differ)."""
    import tensorflow as tf

    from enhancer import imaging
    from enhancer.samples import to_unit_float
    from enhancer.training.evaluate_upscale import ServedModel

    data = small_file(ground_truth(_synthetic(1, (112, 101)), 2), 2, None)
    small = to_unit_float(imaging.decode(data).pixels)
    answer = ServedModel(upscaler)(data)
    assert answer.shape == (112, 100, 3)
    bicubic = to_8bit(tf.image.resize(small[None], (112, 100), method="bicubic").numpy()[0])
    assert np.abs(answer - bicubic)[8:-8, 8:-8].max() <= 1.01 / 255


# --- the whole evaluation (the CLI) --------------------------------------------------------------------
def test_cli_writes_json_markdown_crops_and_the_card(evaluated, upscaler):
    out = upscaler / "eval"
    markdown = (out / "evaluation.md").read_text()
    assert "| q50 | `up-x2` |" in markdown and "| clean | lanczos |" in markdown and "dejpeg-q + bicubic" in markdown
    crops = cv2.imread(str(out / "crops.png"))
    assert crops is not None and crops.shape[0] > crops.shape[1] / 2  # three rows of three crops
    card = (upscaler / "MODEL_CARD.md").read_text()
    assert "enhancer evaluate --scale 2" in card and markdown.strip() in card and "eval/crops.png" in card
    assert evaluated["scale"] == 2 and evaluated["model"] == "up-x2" and evaluated["restorer"] == "dejpeg-q"
    assert set(evaluated["targets"]) == {"clean", "q75", "q50"}


def test_every_image_variant_and_method_is_measured(evaluated):
    results = evaluated["results"]
    assert len(results) == len(SYNTHETIC) * len(VARIANTS) * len(METHODS)
    assert {(r["image"], r["variant"], r["method"]) for r in results} == {
        (i, v, m) for i in SYNTHETIC for v in VARIANTS for m in METHODS
    }
    assert evaluated["sizes"] == {"synthetic-shapes": [98, 130], "synthetic-texture": [112, 100]}
    for r in results:
        assert 10 < r["psnr_y"] < 99 and 0 < r["ssim_y"] <= 1


def test_gains_are_over_bicubic_on_the_same_input(evaluated):
    results = evaluated["results"]
    bicubic = {(r["image"], r["variant"]): r for r in results if r["method"] == "bicubic"}
    for r in results:
        base = bicubic[(r["image"], r["variant"])]
        assert r["gain"] == pytest.approx(r["psnr_y"] - base["psnr_y"])
        assert r["ssim_gain"] == pytest.approx(r["ssim_y"] - base["ssim_y"])
    for variant in VARIANTS:
        row = evaluated["summary"][variant]["bicubic"]
        assert row["mean_gain"] == 0 and row["worst_gain"] == 0 and row["images_below_bicubic"] == 0
        for method in METHODS:
            rows = [r for r in results if r["variant"] == variant and r["method"] == method]
            summary = evaluated["summary"][variant][method]
            assert summary["mean_gain"] == pytest.approx(np.mean([r["gain"] for r in rows]))
            assert summary["worst_gain"] == min(r["gain"] for r in rows)
            assert summary["images_below_bicubic"] == sum(r["gain"] < 0 for r in rows)


def test_methods_differ_from_bicubic(evaluated):
    """The baselines are real computations, not bicubic again (an untrained upscaler is TF's
    bicubic, whose kernel differs from OpenCV's, and the restorer changes JPEG inputs)."""
    for variant in VARIANTS:
        for method in ("model", "lanczos"):
            assert evaluated["summary"][variant][method]["mean_gain"] != 0
    assert evaluated["summary"]["q50"]["restore+bicubic"]["mean_gain"] != 0


def test_cli_refuses_a_scale_the_model_does_not_have(upscaler, testset, tmp_path):
    from enhancer.cli import main

    with pytest.raises(SystemExit, match="enlarges 2 times"):
        main(["evaluate", "--scale", "4", "--model", str(upscaler), "--testset", str(testset), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--scale 2"):
        main(["evaluate", "--model", str(upscaler), "--testset", str(testset), "--out", str(tmp_path)])
