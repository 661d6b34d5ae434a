"""The quantisation input the server computes for a model told the file's tables, and the
strength control: what each image and strength becomes, read from real encoded files."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from helpers import encode_bgr, photo_like
from enhancer import imaging
from enhancer.conditioning import (
    Strength,
    model_inputs,
    no_damage_vector,
    quantization_vector,
    scale_steps,
    upright_luma_table,
)
from enhancer.errors import InvalidParameterError
from enhancer.imaging.jpeg import IJG_CHROMA, ijg_table
from enhancer.models.contract import ModelSpec

CONDITIONED = ModelSpec("dejpeg_q", reach=42, size_multiple=16, inputs={"quantization": 130})


def _info(data: bytes):
    return imaging.decode(data).info


def _jpeg_cv(pixels, quality):
    ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes()


def _with_orientation(pixels_bgr, orientation: int, **save) -> bytes:
    picture = Image.fromarray(cv2.cvtColor(pixels_bgr, cv2.COLOR_BGR2RGB))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", exif=exif, **save)
    return buffer.getvalue()


def test_an_opencv_jpeg_gives_its_own_tables_and_4_2_0():
    vector = quantization_vector(_info(_jpeg_cv(photo_like(64, 80), 37)))
    assert vector[:64].tolist() == ijg_table(37).ravel().tolist()
    assert vector[64:128].tolist() == ijg_table(37, IJG_CHROMA).ravel().tolist()
    assert vector[128:].tolist() == [2, 2]


def test_4_4_4_and_custom_tables_are_read_as_saved():
    luma, chroma = list(range(1, 65)), [2 * v for v in range(1, 65)]
    picture = Image.fromarray(cv2.cvtColor(photo_like(48, 48), cv2.COLOR_BGR2RGB))
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", qtables=[luma, chroma], subsampling=0)
    vector = quantization_vector(_info(buffer.getvalue()))
    assert vector[:64].tolist() == luma and vector[64:128].tolist() == chroma and vector[128:].tolist() == [1, 1]


def test_a_png_takes_the_blind_path_unless_a_strength_describes_it():
    info = _info(encode_bgr(photo_like(40, 40), ".png"))
    assert not quantization_vector(info).any()
    light, strong = quantization_vector(info, Strength.light), quantization_vector(info, Strength.strong)
    assert light[:64].tolist() == ijg_table(75).ravel().tolist()
    assert strong[:64].tolist() == ijg_table(25).ravel().tolist() and strong[128:].tolist() == [2, 2]


def test_light_and_strong_halve_and_double_the_file_s_steps():
    info = _info(_jpeg_cv(photo_like(64, 64), 50))
    auto = quantization_vector(info)
    light, strong = quantization_vector(info, Strength.light), quantization_vector(info, Strength.strong)
    np.testing.assert_array_equal(light[:128], np.clip(np.round(auto[:128] * 0.5), 1, 255))
    np.testing.assert_array_equal(strong[:128], np.clip(np.round(auto[:128] * 2), 1, 255))
    assert light[128:].tolist() == strong[128:].tolist() == auto[128:].tolist()


def test_a_greyscale_jpeg_has_unknown_chroma():
    grey = cv2.cvtColor(photo_like(48, 48), cv2.COLOR_BGR2GRAY)
    ok, buf = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 60])
    vector = quantization_vector(_info(buf.tobytes()))
    assert vector[:64].min() >= 1 and not vector[64:128].any() and vector[128:].tolist() == [1, 1]


def test_a_rotation_that_keeps_the_grid_transposes_the_tables():
    luma = list(range(1, 65))
    data = _with_orientation(photo_like(64, 96), 6, qtables=[luma, luma], subsampling=2)  # 96 and 64: whole MCUs
    vector = quantization_vector(_info(data))
    assert vector[:64].tolist() == np.array(luma).reshape(8, 8).T.ravel().tolist()


def test_a_flip_that_moves_the_grid_falls_back_to_the_blind_path():
    data = _with_orientation(photo_like(64, 100), 2, quality=50, subsampling=2)  # 100 px: not whole MCUs
    assert not quantization_vector(_info(data)).any()
    aligned = _with_orientation(photo_like(64, 96), 2, quality=50, subsampling=2)
    assert quantization_vector(_info(aligned))[:64].min() >= 1


def test_the_upright_luma_table_follows_the_rotation_and_is_none_off_the_grid():
    luma = list(range(1, 65))
    turned = _with_orientation(photo_like(64, 96), 6, qtables=[luma, luma], subsampling=2)
    np.testing.assert_array_equal(upright_luma_table(_info(turned)), np.array(luma).reshape(8, 8).T)
    assert upright_luma_table(_info(_with_orientation(photo_like(64, 100), 2, quality=50, subsampling=2))) is None
    assert upright_luma_table(_info(encode_bgr(photo_like(16, 16), ".png"))) is None


def test_a_pixels_only_model_refuses_a_strength_it_does_not_have():
    info = _info(_jpeg_cv(photo_like(32, 32), 50))
    plain = ModelSpec("dejpeg", reach=29)
    assert model_inputs(plain, info, Strength.auto) == {}
    with pytest.raises(InvalidParameterError, match="has no strength 'strong'"):
        model_inputs(plain, info, Strength.strong)
    assert model_inputs(CONDITIONED, info, Strength.strong)["quantization"].shape == (130,)


def test_off_tells_an_upscaler_no_damage_as_its_training_does():
    from enhancer.training.upscale_data import no_damage_condition

    np.testing.assert_array_equal(no_damage_vector(), no_damage_condition())
    assert no_damage_vector().tolist() == [1.0] * 130  # every step 1, sampling (1, 1)
    for data in (_jpeg_cv(photo_like(32, 32), 20), encode_bgr(photo_like(32, 32), ".png")):
        np.testing.assert_array_equal(quantization_vector(_info(data), Strength.off), no_damage_vector())
    upscaler = ModelSpec("upscale-x2", reach=45, scale=2, size_multiple=16, inputs={"quantization": 130})
    info = _info(_jpeg_cv(photo_like(32, 32), 20))
    np.testing.assert_array_equal(model_inputs(upscaler, info, Strength.off)["quantization"], no_damage_vector())


def test_a_pixels_only_upscaler_cannot_be_told_off():
    info = _info(encode_bgr(photo_like(16, 16), ".png"))
    plain = ModelSpec("sr2", reach=20, scale=2)
    assert model_inputs(plain, info, Strength.auto) == {}
    with pytest.raises(InvalidParameterError, match="enlarges 2x and is not told how the file was compressed"):
        model_inputs(plain, info, Strength.off)


CALIBRATED = ModelSpec("dejpeg_q", reach=42, size_multiple=16, inputs={"quantization": 130},
                       auto_step_scale=((70, 1.0), (90, 0.5)))


@pytest.mark.parametrize("quality, factor", [(50, 1.0), (80, 0.75), (90, 0.5), (95, 0.5)])
def test_auto_tells_a_calibrated_model_the_file_s_steps_times_its_factor_for_the_file_s_quality(quality, factor):
    info = _info(_jpeg_cv(photo_like(64, 64), quality))
    own = quantization_vector(info)
    told = model_inputs(CALIBRATED, info, Strength.auto)["quantization"]
    np.testing.assert_array_equal(told[:128], np.clip(np.round(own[:128] * factor), 1, 255))
    assert told[128:].tolist() == own[128:].tolist() == [2, 2]
    assert (told[:128] < own[:128]).any() == (factor < 1)


def test_light_and_strong_scale_a_calibrated_model_s_auto_steps():
    info = _info(_jpeg_cv(photo_like(64, 64), 90))
    own = quantization_vector(info)
    for strength, factor in ((Strength.light, 0.25), (Strength.strong, 1.0)):
        told = model_inputs(CALIBRATED, info, strength)["quantization"]
        np.testing.assert_array_equal(told[:128], np.clip(np.round(own[:128] * factor), 1, 255))


def test_the_calibration_leaves_the_blind_path_and_greyscale_chroma_alone():
    png = _info(encode_bgr(photo_like(40, 40), ".png"))
    assert not model_inputs(CALIBRATED, png, Strength.auto)["quantization"].any()
    np.testing.assert_array_equal(model_inputs(CALIBRATED, png, Strength.light)["quantization"],
                                  quantization_vector(png, Strength.light))
    grey = cv2.cvtColor(photo_like(48, 48), cv2.COLOR_BGR2GRAY)
    told = model_inputs(CALIBRATED, _info(_jpeg_cv(grey, 95)), Strength.auto)["quantization"]
    assert told[:64].min() >= 1 and not told[64:128].any()


def test_scale_steps_rounds_keeps_unknown_steps_and_never_goes_below_one():
    vector = np.zeros(130, np.float32)
    vector[:3], vector[128:] = (3, 10, 0), (2, 2)
    scaled = scale_steps(vector, 0.3)
    assert scaled[:3].tolist() == [1, 3, 0] and scaled[128:].tolist() == [2, 2]
    assert vector[:3].tolist() == [3, 10, 0]  # the input is not changed
