"""The served default model (`weights/dejpeg-q`, told the file's tables): its signature, that the
tables reach it, its blind path, never-worse on good JPEGs, seams, and the HTTP strength control.

The never-worse crops come from the test set's sources (scikit-image's grass and page, where the
previous model lost most at high quality) plus a rendered screenshot; they choose nothing.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from helpers import REPO_ROOT, decode_bytes, make_settings, running_app, serving
from enhancer import imaging, tiling
from enhancer.conditioning import Strength, quantization_vector
from enhancer.config import Settings
from enhancer.imaging import OutputFormat
from enhancer.models.contract import QUANTIZATION_KEY
from enhancer.pipeline import DirectTiles, Pipeline
from enhancer.training.dataset import psnr

SERVED_DIR = REPO_ROOT / "weights" / "dejpeg-q"


@pytest.fixture(scope="module")
def served():
    from enhancer.models.saved_model import SavedModelRunner, configure_device

    return SavedModelRunner(SERVED_DIR, device=configure_device(Settings(_env_file=None)))


def _crops() -> dict[str, np.ndarray]:
    """Small BGR crops of test-set kinds: fine texture, a text scan, a photo, screen content."""
    import skimage

    from enhancer.training.testset import _terminal

    data = __import__("pathlib").Path(skimage.__file__).parent / "data"
    grass = cv2.imread(str(data / "grass.png"), cv2.IMREAD_COLOR)  # a JPEG once: downscaled, as in the test set
    grass = cv2.resize(grass, (256, 256), interpolation=cv2.INTER_AREA)[:160, :160]
    page = cv2.imread(str(data / "page.png"), cv2.IMREAD_COLOR)[:160, :192]
    astronaut = cv2.imread(str(data / "astronaut.png"), cv2.IMREAD_COLOR)[32:192, 160:320]
    return {"grass": grass, "page": page, "astronaut": astronaut, "terminal": _terminal()[:160, :240]}


def _jpeg(bgr: np.ndarray, quality: int) -> bytes:
    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buffer.tobytes()


def _rgb01(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def _served_pipeline() -> Pipeline:
    return Pipeline.from_settings(Settings(_env_file=None, model_dir=SERVED_DIR))


def _enhance(served, data: bytes, strength: Strength = Strength.auto) -> np.ndarray:
    result = _served_pipeline().run(data, served.spec, OutputFormat.png, 95, DirectTiles({served.spec.name: served}, 1), strength)
    return _rgb01(decode_bytes(result.body))


def test_signature_and_metadata_declare_the_contract(served):
    import tensorflow as tf

    signature = tf.saved_model.load(str(SERVED_DIR)).signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    assert inputs["images"].shape.as_list() == [None, None, None, 3]
    assert inputs[QUANTIZATION_KEY].shape.as_list() == [None, 130]
    assert list(signature.structured_outputs) == ["enhanced"]
    meta = json.loads((SERVED_DIR / "metadata.json").read_text())
    assert meta["size_multiple"] == 16 and meta["inputs"] == {QUANTIZATION_KEY: 130} and meta["scale"] == 1
    assert served.spec.reach >= 42  # the projection's blocks widen the convolutions' 29 px


def test_the_file_s_tables_reach_the_model(served):
    """The same q90 pixels told 'q90' (their own tables) and 'q10' give different answers; told
    q10, the model changes the image more."""
    data = _jpeg(_crops()["astronaut"], 90)
    pixels = _rgb01(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))[:160, :160]
    own = quantization_vector(imaging.decode(data).info)
    q10 = quantization_vector(imaging.decode(_jpeg(_crops()["astronaut"], 10)).info)
    as_q90 = served.forward(pixels[None], {QUANTIZATION_KEY: own[None]})[0]
    as_q10 = served.forward(pixels[None], {QUANTIZATION_KEY: q10[None]})[0]
    assert np.abs(as_q90 - as_q10).mean() > 1e-3
    assert np.abs(as_q10 - pixels).mean() > 2 * np.abs(as_q90 - pixels).mean()


def test_auto_tells_the_model_smaller_steps_for_a_good_file_and_the_answer_moves_less(served):
    """The shipped auto_step_scale (enhancer calibrate-steps): at q92 the model is told smaller
    steps than the file's, which narrows its projection, so the served answer stays closer to the file."""
    from enhancer.conditioning import model_inputs

    data = _jpeg(_crops()["astronaut"], 92)
    info = imaging.decode(data).info
    own, told = quantization_vector(info), model_inputs(served.spec, info)[QUANTIZATION_KEY]
    assert served.spec.step_factor(info.jpeg.quality) < 1 and (told[:128] <= own[:128]).all() and (told[:128] < own[:128]).any()
    pixels = _rgb01(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    answer_own, answer_told = (served.forward(pixels[None], {QUANTIZATION_KEY: v[None]})[0] for v in (own, told))
    assert np.abs(answer_told - pixels).mean() < 0.9 * np.abs(answer_own - pixels).mean()


def test_clean_images_on_the_blind_path_come_back_unchanged(served):
    for name, bgr in _crops().items():
        png = imaging.encode(_rgb01(bgr), OutputFormat.png)
        assert psnr(_enhance(served, png), _rgb01(bgr)) >= 45, name


def test_the_blind_path_restores_a_png_made_from_a_jpeg(served):
    bgr = _crops()["astronaut"]
    damaged = cv2.imdecode(np.frombuffer(_jpeg(bgr, 15), np.uint8), cv2.IMREAD_COLOR)
    png = imaging.encode(_rgb01(damaged), OutputFormat.png)
    assert psnr(_enhance(served, png), _rgb01(bgr)) > psnr(_rgb01(damaged), _rgb01(bgr))


#: Crops and qualities where the served model does not yet meet the issue's bound (strict: once it
#: does, the mark must go). Quality 95 runs the model too: the default pass-through
#: (ENHANCER_PASS_THROUGH_JPEG_QUALITY) starts at 96. Empty since the page crop at q90 and q95 (a
#: re-save at its block grid) is answered with its own pixels (ENHANCER_PASS_THROUGH_RESAVED_JPEG).
NOT_YET: dict[tuple[str, int], str] = {}


@pytest.mark.parametrize(
    "name,quality",
    [
        pytest.param(name, q, marks=pytest.mark.xfail(strict=True, reason=NOT_YET[(name, q)]) if (name, q) in NOT_YET else ())
        for name in ("grass", "page", "astronaut", "terminal")
        for q in (50, 70, 90, 95)
    ],
)
def test_never_worse_than_the_jpeg_on_good_files(served, name, quality):
    bgr = _crops()[name]
    data = _jpeg(bgr, quality)
    damaged = _rgb01(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    gain = psnr(_enhance(served, data), _rgb01(bgr)) - psnr(damaged, _rgb01(bgr))
    assert gain >= -0.1, f"{name} at q{quality}: {gain:+.3f} dB"


def test_a_grey_picture_in_a_colour_jpeg_comes_back_grey(served):
    """A scan saved as a colour JPEG has flat chroma: the answer must not add a tint, and it must
    still restore (the grey answer beats the file)."""
    bgr = _crops()["page"]
    data = _jpeg(bgr, 20)
    assert imaging.decode(data).info.jpeg.chroma_table is not None  # a colour file
    answer = _enhance(served, data)
    assert np.ptp(answer, axis=-1).max() == 0
    damaged = _rgb01(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    assert psnr(answer, _rgb01(bgr)) > psnr(damaged, _rgb01(bgr))


def test_strength_off_returns_the_input_pixels_exactly(served):
    data = _jpeg(_crops()["page"], 30)
    decoded = _rgb01(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    np.testing.assert_array_equal(_enhance(served, data, Strength.off), decoded)


def test_tiled_answer_equals_one_whole_tile_within_one_step(served):
    """Tiles start on the file's 16 px grid and overlap by the model's reach: no seams."""
    bgr = cv2.resize(_crops()["astronaut"], (300, 260), interpolation=cv2.INTER_CUBIC)
    data = _jpeg(bgr, 20)
    image = imaging.decode(data)
    vector = quantization_vector(image.info)
    spec = served.spec
    overlap = -(-spec.reach // spec.size_multiple) * spec.size_multiple

    def forward(batch):
        return served.forward(batch, {QUANTIZATION_KEY: np.repeat(vector[None], len(batch), axis=0)})

    tiled = tiling.enhance_tiled(image.pixels, forward, 128, overlap, batch_size=4, multiple=spec.size_multiple)
    whole = tiling.enhance_tiled(image.pixels, forward, 512, overlap, batch_size=1, multiple=spec.size_multiple)
    assert np.abs(np.clip(tiled, 0, 1) - np.clip(whole, 0, 1)).max() * 255 <= 1.0


@pytest.mark.anyio
async def test_http_strength_control_on_the_served_model(served):
    """Over HTTP: strong restores more than auto, off answers the decoded input, a bad value is 422."""
    spec = served.spec
    settings = make_settings(model_dir=SERVED_DIR, tile_overlap=-(-spec.reach // 16) * 16)
    bgr = _crops()["astronaut"]
    data = _jpeg(bgr, 40)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    async with running_app(__import__("enhancer.api", fromlist=["create_app"]).create_app(settings, models=serving(served))) as client:
        answers = {}
        for strength in ("auto", "strong", "off"):
            r = await client.post(f"/upscale?strength={strength}", files={"image": ("a.jpg", data, "image/jpeg")})
            assert r.status_code == 200, r.text
            answers[strength] = decode_bytes(r.content).astype(np.int16)
        bad = await client.post("/upscale?strength=max", files={"image": ("a.jpg", data, "image/jpeg")})
    assert bad.status_code == 422 and "strength" in bad.text
    np.testing.assert_array_equal(answers["off"], decoded)
    change = {k: np.abs(v - decoded).mean() for k, v in answers.items()}
    assert change["strong"] > change["auto"] > 0


@pytest.mark.anyio
async def test_http_a_jpeg_saved_again_at_its_grid_comes_back_unchanged_under_auto_only(served):
    """A coarser JPEG saved again at the same block grid: auto answers its own pixels and says why,
    strong still restores it."""
    spec = served.spec
    settings = make_settings(model_dir=SERVED_DIR, tile_overlap=-(-spec.reach // 16) * 16)
    photo = cv2.imread(str(REPO_ROOT / "tests" / "data" / "held_out_photo.png"), cv2.IMREAD_COLOR)
    data = _jpeg(cv2.imdecode(np.frombuffer(_jpeg(photo, 50), np.uint8), cv2.IMREAD_COLOR), 90)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    async with running_app(__import__("enhancer.api", fromlist=["create_app"]).create_app(settings, models=serving(served))) as client:
        auto = await client.post("/upscale", files={"image": ("a.jpg", data, "image/jpeg")})
        strong = await client.post("/upscale?strength=strong", files={"image": ("a.jpg", data, "image/jpeg")})
    assert auto.status_code == strong.status_code == 200
    assert auto.headers["X-Enhancer-Passed-Through"] == "resaved-jpeg"
    np.testing.assert_array_equal(decode_bytes(auto.content), decoded)
    assert "X-Enhancer-Passed-Through" not in strong.headers
    assert np.abs(decode_bytes(strong.content).astype(np.int16) - decoded).mean() > 0
