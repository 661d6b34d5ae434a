"""The one pipeline (decode -> pass-through -> split -> run tiles -> stitch -> clip -> encode) with
fake models, its tiles run directly (`DirectTiles`, as `enhancer enhance` runs them). The serving
layer around it, with a fake batcher, is test_service.py; the real SavedModel path is covered over
HTTP (api/test_http.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from helpers import NearestModel, decode_bytes, encode_bgr, photo_like

from enhancer import conditioning
from enhancer.imaging import OutputFormat
from enhancer.pipeline import DirectTiles, Pipeline


def pipeline(**overrides) -> Pipeline:
    return Pipeline(**{"tile_size": 128, "tile_overlap": 32, **overrides})


def test_a_2x_model_through_the_whole_pipeline_gives_the_upscaled_image():
    pixels = photo_like(150, 210, seed=1)
    model = NearestModel(scale=2)
    result = pipeline().run(encode_bgr(pixels, ".png"), model.spec, OutputFormat.png, 95, DirectTiles({model.spec.name: model}, 4))
    assert (result.width, result.height, result.model, result.passed_through) == (420, 300, "nearest2x", None)
    np.testing.assert_array_equal(decode_bytes(result.body), np.repeat(np.repeat(pixels, 2, axis=0), 2, axis=1))
    assert sum(n for n, _ in model.calls) > 4 and max(n for n, _ in model.calls) == 4  # tiled, 4 per pass
    assert set(result.timings) == {"decode", "tile", "queue", "infer", "encode"}


def test_direct_tiles_give_every_tile_its_image_s_extra_inputs(monkeypatch):
    monkeypatch.setitem(conditioning.BUILDERS, "size", lambda image, strength, spec: [image.height, image.width])
    model = NearestModel(inputs={"size": 2})
    progress = []
    run_tiles = DirectTiles({model.spec.name: model}, 3, progress=progress.append)
    result = pipeline().run(encode_bgr(photo_like(200, 300), ".png"), model.spec, OutputFormat.png, 95, run_tiles)
    assert result.width == 300
    for n, inputs in model.calls:
        assert inputs["size"].shape == (n, 2) and (inputs["size"] == [200, 300]).all()
    assert sum(progress) == sum(n for n, _ in model.calls) and max(progress) == 3


def test_a_good_jpeg_is_passed_through_without_running_the_tiles():
    data = encode_bgr(photo_like(60, 80), ".jpg", cv2.IMWRITE_JPEG_QUALITY, 95)

    def never(job):
        raise AssertionError("the model must not run")

    result = pipeline(pass_through_jpeg_quality=92).run(data, NearestModel().spec, OutputFormat.png, 95, never)
    assert result.passed_through == "jpeg-quality=95"
    assert result.timings["tile"] == result.timings["queue"] == result.timings["infer"] == 0.0
    np.testing.assert_array_equal(decode_bytes(result.body), decode_bytes(data))


def test_a_jpeg_saved_again_at_the_same_grid_is_passed_through_only_under_auto():
    earlier = cv2.imdecode(np.frombuffer(encode_bgr(photo_like(256, 384, seed=3), ".jpg", cv2.IMWRITE_JPEG_QUALITY, 50), np.uint8), 1)
    data = encode_bgr(earlier, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 90)
    model = NearestModel(inputs={"quantization": 130})
    run_tiles = DirectTiles({model.spec.name: model}, 4)
    p = pipeline(pass_through_resaved_jpeg=True)
    result = p.run(data, model.spec, OutputFormat.png, 95, run_tiles)
    assert result.passed_through == "resaved-jpeg" and not model.calls
    np.testing.assert_array_equal(decode_bytes(result.body), decode_bytes(data))
    assert p.run(data, model.spec, OutputFormat.png, 95, run_tiles, conditioning.Strength.strong).passed_through is None
    assert model.calls  # strong restores it
    assert pipeline(pass_through_resaved_jpeg=False).run(data, model.spec, OutputFormat.png, 95, run_tiles).passed_through is None
    single = encode_bgr(photo_like(256, 384, seed=3), ".jpg", cv2.IMWRITE_JPEG_QUALITY, 90)
    assert p.run(single, model.spec, OutputFormat.png, 95, run_tiles).passed_through is None


def test_a_jpeg_declaring_a_zero_step_is_restored_not_refused_by_the_re_save_check():
    """libjpeg decodes a quantisation table holding a 0; the re-save check must not divide by it."""
    earlier = cv2.imdecode(np.frombuffer(encode_bgr(photo_like(256, 384, seed=3), ".jpg", cv2.IMWRITE_JPEG_QUALITY, 50), np.uint8), 1)
    data = bytearray(encode_bgr(earlier, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 90))
    table = data.find(b"\xff\xdb") + 5  # the first table's 64 steps, in zigzag order
    data[table + 1] = data[table + 2] = 0
    model = NearestModel(inputs={"quantization": 130})
    result = pipeline(pass_through_resaved_jpeg=True).run(bytes(data), model.spec, OutputFormat.png, 95, DirectTiles({model.spec.name: model}, 4))
    assert (result.width, result.height) == (384, 256)


def test_the_tiles_can_be_taken_once_and_finish_needs_the_outputs():
    p = pipeline()
    prepared = p.prepare(encode_bgr(photo_like(40, 40), ".png"), NearestModel().spec)
    job = prepared.take_job()
    assert job.model == "nearest1x" and job.tiles.shape[0] == prepared.plan.num_tiles
    with pytest.raises(ValueError, match="no tiles to run"):
        prepared.take_job()
    with pytest.raises(ValueError, match="needs the model's tiles"):
        p.finish(prepared, OutputFormat.png)
