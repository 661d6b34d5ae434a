"""Issue 15's host-side settings: the border context, exact vs bucketed tile shapes, and the PNG
answer's zlib level; what each does to the tiles the model gets and to the answer's bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import decode_bytes, encode_bgr, make_settings, photo_like
from PIL import Image
from pydantic import ValidationError

from enhancer import imaging, tiling
from enhancer.config import Settings
from enhancer.imaging import OutputFormat
from enhancer.models.contract import ModelSpec
from enhancer.pipeline import DirectTiles, Pipeline

#: The served dejpeg-q's facts that matter here (weights/dejpeg-q/metadata.json): reach 42, size
#: multiple 16; the server raises the 32 px overlap to 48 for it.
SERVED = ModelSpec(name="served-like", reach=42, size_multiple=16)


class Recorder:
    """Keeps the model contract; returns its input and records every batch's shape."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, batch, inputs=None):
        self.shapes.append(batch.shape)
        return batch


def served_pipeline(**env) -> Pipeline:
    """The pipeline `enhancer serve` builds on a CPU for the served model, from these settings."""
    return Pipeline.from_settings(Settings(_env_file=None, **env).for_device("cpu"))


# ---------------------------------------------------------------------------- settings
def test_defaults_no_context_exact_shapes_on_a_cpu_and_opencv_png():
    s = Settings(_env_file=None)
    assert (s.border_context, s.tile_buckets, s.png_compression) == (0, None, None)
    assert s.for_device("cpu").uses_tile_buckets is False  # batch 1: nothing shares a batch
    assert s.for_device("gpu").uses_tile_buckets is True  # batch 8: tiles must share shapes


def test_bucket_resolution_follows_batching_and_xla_and_an_explicit_choice():
    assert Settings(_env_file=None, max_batch_size=4).uses_tile_buckets is True
    assert Settings(_env_file=None, max_batch_size=4, tile_buckets=False).uses_tile_buckets is False
    assert Settings(_env_file=None, tile_buckets=True).uses_tile_buckets is True
    # XLA compiles per shape, so it always gets the finite set it warmed up
    assert Settings(_env_file=None, xla=True, tile_buckets=False).uses_tile_buckets is True


def test_settings_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("ENHANCER_BORDER_CONTEXT", "16")
    monkeypatch.setenv("ENHANCER_TILE_BUCKETS", "true")
    monkeypatch.setenv("ENHANCER_PNG_COMPRESSION", "3")
    s = Settings(_env_file=None)
    assert (s.border_context, s.tile_buckets, s.png_compression) == (16, True, 3)
    pipeline = Pipeline.from_settings(s)
    assert (pipeline.border_context, pipeline.tile_buckets, pipeline.png_compression) == (16, True, 3)


def test_empty_png_compression_means_unset(monkeypatch):
    monkeypatch.setenv("ENHANCER_PNG_COMPRESSION", "")
    monkeypatch.setenv("ENHANCER_TILE_BUCKETS", "")
    s = Settings(_env_file=None)
    assert (s.png_compression, s.tile_buckets) == (None, None)


@pytest.mark.parametrize(("field", "value"), [("png_compression", 10), ("png_compression", -1), ("border_context", -16)])
def test_out_of_range_values_are_refused(field, value):
    with pytest.raises(ValidationError, match=field):
        Settings(_env_file=None, **{field: value})


def test_the_start_up_line_says_which_tiling_runs():
    line = Settings(_env_file=None).for_device("cpu").describe_inference("cpu", "CPU")
    assert "border context 0, exact tile shapes" in line
    line = Settings(_env_file=None, border_context=16).for_device("gpu").describe_inference("gpu", "GPU")
    assert "border context 16, bucketed tile shapes" in line


# ---------------------------------------------------------------------------- what the model gets
def test_a_512_image_is_one_512_tile_with_the_cpu_defaults():
    """The issue's case: with the old context a 512x512 upload ran as 4 tiles of 336 px for this
    model (608 px of need against a 576 tile), 1.72x its pixels; now it is the image itself."""
    model = Recorder(SERVED)
    data = encode_bgr(photo_like(512, 512), ".png")
    result = served_pipeline().run(data, SERVED, OutputFormat.png, 95, DirectTiles({SERVED.name: model}, 1))
    assert model.shapes == [(1, 512, 512, 3)]
    np.testing.assert_array_equal(decode_bytes(result.body), photo_like(512, 512))  # identity model: same pixels


def test_the_old_tiling_is_one_setting_away():
    model = Recorder(SERVED)
    data = encode_bgr(photo_like(512, 512), ".png")
    served_pipeline(border_context=48, tile_buckets=True).run(data, SERVED, OutputFormat.png, 95, DirectTiles({SERVED.name: model}, 1))
    assert model.shapes == [(1, 336, 336, 3)] * 4


@pytest.mark.parametrize(("context", "side"), [(0, 512), (16, 544), (32, 576)])
def test_border_context_adds_that_much_mirrored_image(context, side):
    plan = tiling.plan_tiles(512, 512, 576, 48, multiple=16, context=context, buckets=False)
    assert plan.tile_shape == (side, side) and plan.num_tiles == 1
    assert (plan.rows.pad_before, plan.cols.pad_before) == (context, context)
    image = photo_like(512, 512).astype(np.float32) / 255
    tile = tiling.split(image, plan)[0]
    if context:  # mirrored without repeating the edge pixel, as np.pad's "reflect"
        np.testing.assert_array_equal(tile[:context, context : context + 512], image[context:0:-1])


def test_exact_shapes_round_only_to_the_size_multiple_and_keep_the_grid():
    plan = tiling.plan_tiles(375, 500, 576, 48, multiple=16, context=0, buckets=False)
    assert plan.tile_shape == (384, 512) and (plan.rows.pad_before, plan.cols.pad_before) == (0, 0)
    for size in (17, 100, 333, 575, 577, 1000, 3000, 4000):
        axis = tiling.plan_axis(size, 576, 48, multiple=16, context=0, buckets=False)
        assert axis.tile % 16 == 0 and axis.tile <= 576
        assert all((start - axis.pad_before) % 16 == 0 for start in axis.starts)  # JPEG grid phase kept
        assert axis.starts[0] <= axis.pad_before and axis.pad_before + size <= axis.length


def test_exact_shapes_run_fewer_pixels_than_buckets():
    for h, w in [(512, 512), (768, 1024), (3000, 4000), (600, 800), (1080, 1920)]:
        exact = tiling.plan_tiles(h, w, 576, 48, multiple=16, context=0, buckets=False)
        bucketed = tiling.plan_tiles(h, w, 576, 48, multiple=16)
        assert exact.waste_ratio <= bucketed.waste_ratio, (h, w)
    assert tiling.plan_tiles(512, 512, 576, 48, multiple=16, context=0, buckets=False).waste_ratio == 1.0
    assert tiling.plan_tiles(3000, 4000, 576, 48, multiple=16, context=0, buckets=False).waste_ratio < 1.2


@pytest.mark.parametrize(("h", "w"), [(512, 512), (300, 1100), (1000, 1300), (7, 40)])
def test_exact_tiles_stitch_back_to_the_image(h, w):
    image = photo_like(h, w).astype(np.float32) / 255
    plan = tiling.plan_tiles(h, w, 256, 48, multiple=16, context=0, buckets=False)
    np.testing.assert_allclose(tiling.stitch(tiling.split(image, plan), plan), image, atol=1e-6)


def test_a_negative_context_is_refused():
    with pytest.raises(ValueError, match="border context"):
        tiling.plan_axis(100, 128, 32, multiple=4, context=-1)


def test_the_real_model_agrees_with_one_pass_over_the_image(saved_model):
    """With no context and exact shapes, an image that fits one tile gets exactly what one forward
    pass over the image as it is gives (the model's own padding); measured quality: RESULTS.md."""
    spec = saved_model.spec
    image = photo_like(96, 128).astype(np.float32) / 255
    plan = tiling.plan_tiles(96, 128, 128, 32, multiple=spec.size_multiple, context=0, buckets=False)
    assert plan.tile_shape == (96, 128)
    tiled = tiling.stitch(saved_model.forward(tiling.split(image, plan)), plan)
    whole = saved_model.forward(image[None])[0]
    np.testing.assert_allclose(tiled, whole, atol=1e-6)


@pytest.mark.anyio
async def test_the_server_runs_exact_tiles_at_batch_1(saved_model):
    """Over HTTP with the CPU defaults' batch 1: a 100x120 upload reaches the model as one tile of
    its own size rounded to the size multiple, not a bucket."""
    from helpers import WrappedModel, running_app, serving

    from enhancer.api.app import create_app

    shapes = []

    class Recording(WrappedModel):
        def forward(self, batch, inputs=None):
            shapes.append(batch.shape)
            return super().forward(batch, inputs)

    settings = make_settings(max_batch_size=1, tile_size=128, border_context=Settings.model_fields["border_context"].default)
    app = create_app(settings, models=serving(Recording(saved_model)))
    async with running_app(app) as client:
        shapes.clear()  # warm-up
        response = await client.post("/upscale", files={"image": ("a.png", encode_bgr(photo_like(100, 120), ".png"), "image/png")})
    assert response.status_code == 200, response.text
    m = saved_model.spec.size_multiple
    assert shapes == [(1, -(-100 // m) * m, -(-120 // m) * m, 3)]


@pytest.mark.anyio
@pytest.mark.parametrize("batch", [1, 2])
async def test_warm_up_runs_the_largest_tile_alone_with_exact_shapes_and_every_bucket_otherwise(saved_model, batch):
    """Before /readyz is 200: with exact tile shapes (batch 1) warming the bucket ladder would not
    cover the shapes requests bring, so only the largest tile runs (it pays TensorFlow's one-time
    start and proves the batch fits); with buckets every bucket shape runs, at batch 1 and full."""
    from helpers import WrappedModel, running_app, serving

    from enhancer.api.app import create_app

    warmed = []

    class Recording(WrappedModel):
        def warm_up(self, shapes, max_batch_size):
            warmed.append((list(shapes), max_batch_size))
            return super().warm_up(shapes, max_batch_size)

    settings = make_settings(max_batch_size=batch, tile_size=128)
    app = create_app(settings, models=serving(Recording(saved_model)))
    async with running_app(app) as client:
        assert (await client.get("/readyz")).status_code == 200
    m = saved_model.spec.size_multiple
    if batch == 1:
        assert warmed == [([(128, 128)], 1)]
    else:
        assert warmed == [(tiling.bucket_shapes(128, m), 2)] and len(warmed[0][0]) > 1


# ---------------------------------------------------------------------------- PNG level
@pytest.mark.parametrize("level", [None, 0, 1, 3, 9])
def test_every_png_level_gives_the_same_pixels(level):
    pixels = photo_like(120, 160)
    image = imaging.decode(encode_bgr(pixels, ".png"))
    body = imaging.encode(image.pixels, OutputFormat.png, info=image.info, png_compression=level)
    np.testing.assert_array_equal(decode_bytes(body), pixels)


def test_a_higher_png_level_gives_a_smaller_file_and_level_0_stores():
    image = imaging.decode(encode_bgr(photo_like(200, 200), ".png"))
    size = {lvl: len(imaging.encode(image.pixels, OutputFormat.png, info=image.info, png_compression=lvl)) for lvl in (0, 1, 9)}
    assert size[0] > 200 * 200 * 3  # stored, not deflated
    assert size[9] < size[1] < size[0]


def test_the_pillow_path_takes_the_level_too():
    grey_alpha = np.dstack([photo_like(80, 90, channels=1)[..., 0], np.full((80, 90), 200, np.uint8)])
    buffer = io.BytesIO()
    Image.fromarray(grey_alpha, "LA").save(buffer, "PNG")
    image = imaging.decode(buffer.getvalue())
    assert image.info.grayscale and image.info.alpha is not None
    sizes = {}
    for level in (0, 9):
        body = imaging.encode(image.pixels, OutputFormat.png, info=image.info, png_compression=level)
        assert Image.open(io.BytesIO(body)).mode == "LA"
        sizes[level] = len(body)
    assert sizes[9] < sizes[0]


def test_the_pipeline_encodes_with_its_level():
    model = Recorder(ModelSpec(name="id", reach=0, size_multiple=4))
    data = encode_bgr(photo_like(64, 64), ".png")
    bodies = {
        level: Pipeline(tile_size=64, tile_overlap=0, png_compression=level)
        .run(data, model.spec, OutputFormat.png, 95, DirectTiles({"id": model}, 1))
        .body
        for level in (0, 9)
    }
    assert len(bodies[9]) < len(bodies[0])
    np.testing.assert_array_equal(decode_bytes(bodies[0]), decode_bytes(bodies[9]))


def test_an_out_of_range_level_is_refused_by_the_encoder():
    with pytest.raises(ValueError, match="png_compression"):
        imaging.encode(np.zeros((4, 4, 3), np.float32), OutputFormat.png, png_compression=12)
