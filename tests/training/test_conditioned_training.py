"""The conditioned model's training side: JPEG damage with its true tables, the projection onto
the file's quantisation intervals, the content mixture, and the conditioned network."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import REPO_ROOT
from PIL import Image

from enhancer.training import jpeg_damage, synthetic
from enhancer.training.dataset import psnr
from enhancer.training.mixture import MixtureSampler

DATA = REPO_ROOT / "tests" / "data"


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random colour field with edges (BGR uint8), enough texture for JPEG to damage."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3)).astype(np.uint8)
    image = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    cv2.rectangle(image, (w // 4, h // 4), (w // 2, h // 2), (20, 200, 40), -1)
    return image


def _fonts() -> list[Path]:
    import matplotlib

    return [Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"]


@pytest.mark.parametrize("quality,subsampling", [(10, 2), (50, 1), (90, 0)])
def test_saved_file_carries_exactly_the_recipe_tables(quality, subsampling):
    recipe = jpeg_damage.ijg_recipe(quality, subsampling)
    picture = Image.open(io.BytesIO(jpeg_damage.save_jpeg(_photo(64, 64, 0), recipe)))
    luma_table, chroma_table = picture.layer[0][3], picture.layer[1][3]
    assert list(picture.quantization[luma_table]) == recipe.luma.astype(int).tolist()
    assert list(picture.quantization[chroma_table]) == recipe.chroma.astype(int).tolist()
    h_factor, v_factor = picture.layer[0][1] // picture.layer[1][1], picture.layer[0][2] // picture.layer[1][2]
    condition = recipe.condition()
    assert condition.shape == (jpeg_damage.QUANTIZATION_LENGTH,)
    assert tuple(condition[128:]) == (h_factor, v_factor) == jpeg_damage.SAMPLING[subsampling]


def test_ijg_tables_match_what_opencv_writes():
    ok, data = cv2.imencode(".jpg", _photo(64, 64, 1), [cv2.IMWRITE_JPEG_QUALITY, 37])
    picture = Image.open(io.BytesIO(data.tobytes()))
    assert list(picture.quantization[0]) == jpeg_damage.ijg_scale(jpeg_damage.IJG_LUMA, 37).astype(int).tolist()
    assert list(picture.quantization[1]) == jpeg_damage.ijg_scale(jpeg_damage.IJG_CHROMA, 37).astype(int).tolist()


def test_greyscale_recipe_marks_chroma_unknown():
    condition = jpeg_damage.ijg_recipe(30, grayscale=True).condition()
    assert condition[:64].min() >= 1 and not condition[64:128].any() and tuple(condition[128:]) == (1, 1)


def test_every_table_family_saves_and_decodes():
    rng = np.random.default_rng(3)
    for _ in range(40):
        recipe = jpeg_damage.sample_recipe(rng, grayscale=bool(rng.random() < 0.2))
        decoded = jpeg_damage.jpeg_round_trip(_photo(48, 48, 2), recipe)
        assert decoded.shape == (48, 48, 3)
        assert 1 <= recipe.luma.min() and recipe.luma.max() <= 255


def _project(restored, damaged, condition):
    import tensorflow as tf

    from enhancer.training.projection import project

    return project(tf.constant(restored[None]), tf.constant(damaged[None]), tf.constant(condition[None])).numpy()[0]


def _rgb(bgr):
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255


@pytest.mark.parametrize("quality,subsampling", [(20, 2), (75, 1), (90, 0)])
def test_projection_keeps_the_original_and_pulls_a_blur_back(quality, subsampling):
    clean_bgr = _photo(128, 128, 4)
    recipe = jpeg_damage.ijg_recipe(quality, subsampling)
    damaged = _rgb(jpeg_damage.jpeg_round_trip(clean_bgr, recipe))
    clean = _rgb(clean_bgr)
    # The original lies inside the file's intervals (up to the decoder's rounding): kept.
    assert psnr(_project(clean, damaged, recipe.condition()), clean) > 55
    # A blurred guess lies outside them: projecting brings it back towards the file.
    blurred = cv2.GaussianBlur(damaged, (0, 0), 2.0)
    projected = np.clip(_project(blurred, damaged, recipe.condition()), 0, 1)
    assert psnr(projected, clean) > psnr(blurred, clean) + 0.1


def test_projection_with_unknown_tables_changes_nothing():
    damaged = _rgb(_photo(64, 64, 5))
    guess = np.clip(damaged + 0.05, 0, 1)
    out = _project(guess, damaged, np.zeros(jpeg_damage.QUANTIZATION_LENGTH, np.float32))
    np.testing.assert_allclose(out, guess, atol=1e-5)


def test_projection_bounds_luma_coefficients_to_half_a_step():
    from enhancer.training.projection import _RGB_TO_YCC, dct_matrix

    recipe = jpeg_damage.ijg_recipe(60, 0)
    damaged = _rgb(jpeg_damage.jpeg_round_trip(_photo(64, 64, 6), recipe))
    wild = np.random.default_rng(0).uniform(0, 1, damaged.shape).astype(np.float32)
    out = _project(wild, damaged, recipe.condition())
    d = dct_matrix()

    def luma_coefficients(rgb):
        y = (rgb @ _RGB_TO_YCC.T)[..., 0] * 255
        blocks = y.reshape(8, 8, 8, 8).transpose(0, 2, 1, 3)
        return np.einsum("ui,abij,vj->abuv", d, blocks, d)

    distance = np.abs(luma_coefficients(out) - luma_coefficients(damaged))
    assert np.all(distance <= recipe.luma.reshape(8, 8) / 2 + 1e-3)


def test_mixture_batches_are_reproducible_and_shaped():
    photos = [_photo(600, 640, 7), _photo(640, 600, 8)]
    sampler = MixtureSampler(photos, _fonts(), patch_size=32, batch_size=6, seed=11)
    a, b = sampler.batch(3), sampler.batch(3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    damaged, clean, condition = a
    assert damaged.shape == clean.shape == (6, 32, 32, 3) and condition.shape == (6, jpeg_damage.QUANTIZATION_LENGTH)
    assert not np.array_equal(sampler.batch(4)[0], damaged)


def test_mixture_draws_every_kind_and_both_paths():
    photos = [_photo(600, 640, 9)]
    sampler = MixtureSampler(photos, _fonts(), patch_size=32, batch_size=1, seed=0)
    rng = np.random.default_rng(1)
    samples = [sampler.sample(rng) for _ in range(300)]
    kinds = {s.kind.split("/")[0] for s in samples}
    assert kinds == {"photo", "rephoto", "dead_leaves", "text", "screen"}
    blind = [s for s in samples if s.kind.endswith("/blind")]
    assert 0.1 < len(blind) / len(samples) < 0.35
    assert all(not s.quantization.any() for s in blind)
    assert any(np.array_equal(s.damaged, s.clean) for s in blind)  # some blind patches are clean
    told = [s for s in samples if not s.kind.endswith("/blind")]
    assert all(s.quantization[:64].min() >= 1 for s in told)


def test_mixture_refuses_a_patch_off_the_chroma_grid():
    with pytest.raises(ValueError, match="multiple of 16"):
        MixtureSampler([_photo(600, 600, 0)], _fonts(), patch_size=40, batch_size=1, seed=0)


def test_synthetic_generators_give_bgr_images_of_the_asked_size():
    rng = np.random.default_rng(0)
    for make in (lambda: synthetic.dead_leaves(rng, 96), lambda: synthetic.text_page(rng, 96, _fonts()),
                 lambda: synthetic.screen(rng, 96, _fonts())):  # fmt: skip
        image = make()
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert image.std() > 1  # not a flat colour


def test_conditioned_net_starts_as_the_served_base_net():
    """Zero-initialised FiLM heads and the body copied from the shipped SavedModel: with no
    tables (projection off) the new net answers exactly as the shipped model does."""
    import tensorflow as tf

    from enhancer.training import network

    model = network.build("dejpeg_q")
    filled = network.load_body_weights(model, "weights/dejpeg")
    assert "half_out" in filled and "quarter_0" in filled
    x = np.random.default_rng(0).uniform(0, 1, (1, 64, 64, 3)).astype(np.float32)
    served = tf.saved_model.load("weights/dejpeg").signatures["serving_default"](images=tf.constant(x))["enhanced"]
    ours = model([x, np.zeros((1, jpeg_damage.QUANTIZATION_LENGTH), np.float32)])
    np.testing.assert_allclose(np.clip(ours, 0, 1), served.numpy(), atol=1e-5)


def test_conditioned_reach_covers_the_projection_blocks():
    from enhancer.training import network

    base, conditioned = network.build("dejpeg"), network.build("dejpeg_q")
    assert network.receptive_field_reach(conditioned) > network.receptive_field_reach(base)


def test_grown_restorer_starts_as_the_trained_one_and_reaches_further(tmp_path):
    """`dejpeg_q_deep` started from a trained `dejpeg_q` file answers exactly as that net (its
    detour's last convolution is zero) until training moves it, and sees further."""
    from enhancer.training import network

    trained = network.build("dejpeg_q")
    rng = np.random.default_rng(3)
    trained.set_weights([rng.normal(0, 0.05, w.shape).astype(np.float32) for w in trained.get_weights()])
    stored = tmp_path / "trained.weights.h5"
    trained.save_weights(str(stored))
    grown = network.build("dejpeg_q_deep")
    network.load_init_weights(grown, str(stored), scale=1)
    x = rng.uniform(0, 1, (1, 64, 64, 3)).astype(np.float32)
    told = jpeg_damage.ijg_recipe(20).condition()[None]
    np.testing.assert_array_equal(grown([x, told]).numpy(), trained([x, told]).numpy())
    detour = grown.get_layer("eighth_out")
    detour.set_weights([rng.normal(0, 0.05, w.shape).astype(np.float32) for w in detour.get_weights()])
    assert np.abs(grown([x, told]).numpy() - trained([x, told]).numpy()).max() > 1e-3
    assert network.receptive_field_reach(grown) > network.receptive_field_reach(trained)


def test_mix_2_saves_grey_content_as_colour_files_too():
    """Mix 1 saved every grey patch as a one-channel file (chroma steps unknown); mix 2 also saves
    grey pixels in colour files (chroma steps known), as scanners and phones do."""
    photos = [_photo(600, 640, 5)]

    def grey_told(mix):
        sampler = MixtureSampler(photos, _fonts(), patch_size=32, batch_size=1, seed=0, mix=mix)
        rng = np.random.default_rng(2)
        samples = [sampler.sample(rng) for _ in range(400)]
        return [s for s in samples if not s.kind.endswith("/blind") and np.ptp(s.clean, axis=-1).max() == 0]

    assert all(s.quantization[64] == 0 for s in grey_told(1))
    told = grey_told(2)
    assert any(s.quantization[64] == 0 for s in told) and any(s.quantization[64] > 0 for s in told)


def test_mix_2_grain_stays_in_the_clean_target():
    """Grain is content: the clean target carries it (more fine detail than the source region)."""
    rng = np.random.default_rng(4)
    flat = np.full((64, 64, 3), 120, np.uint8)
    grainy = synthetic.grain(flat, rng)
    assert grainy.shape == flat.shape and grainy.dtype == np.uint8
    assert 0.5 < grainy.astype(np.float32).std() < 15


def test_scanned_pages_are_blurred_and_noisy_but_still_text():
    rng = np.random.default_rng(6)
    page = synthetic.text_page(rng, 96, _fonts())
    scan = synthetic.scanned(page, rng)
    assert scan.shape == page.shape and scan.dtype == np.uint8
    edges = lambda im: np.abs(np.diff(im.astype(np.float32), axis=1)).mean()  # noqa: E731
    assert 0 < np.abs(scan.astype(np.float32) - page).mean() and edges(scan) > 0.2 * edges(page)


def test_unknown_mix_is_refused():
    with pytest.raises(ValueError, match="unknown training mix"):
        MixtureSampler([_photo(600, 600, 0)], _fonts(), patch_size=32, batch_size=1, seed=0, mix=8)


def test_mix_3_without_scanned_pages_is_refused_with_the_command_that_fetches_them():
    small_page = np.full((40, 40, 3), 200, np.uint8)  # below patch + 16: unusable
    with pytest.raises(ValueError, match="enhancer fetch-scans"):
        MixtureSampler([_photo(600, 600, 0)], _fonts(), patch_size=32, batch_size=1, seed=0, mix=3, pages=[small_page])


def test_mix_3_trains_on_the_scanned_pages_it_is_given():
    """A tenth of mix 3's patches are crops of the pages: with a page of one grey level, every
    document patch's clean target is that level (no grain, tint or other content mixed in)."""
    page = np.full((400, 300, 3), 123, np.uint8)
    sampler = MixtureSampler([_photo(600, 600, 0)], _fonts(), patch_size=32, batch_size=1, seed=0, mix=3, pages=[page])
    rng = np.random.default_rng(8)
    documents = [s for s in (sampler.sample(rng) for _ in range(300)) if s.kind.startswith("document")]
    assert 10 <= len(documents) <= 60
    for sample in documents:
        np.testing.assert_allclose(sample.clean, 123 / 255, atol=1e-6)
    mix_2 = MixtureSampler([_photo(600, 600, 0)], _fonts(), patch_size=32, batch_size=1, seed=0, mix=2, pages=[page])
    assert not any(mix_2.sample(rng).kind.startswith("document") for _ in range(200))


@pytest.mark.parametrize("mix, first_quality, earlier_save_kept", [(4, 80, True), (4, 30, False), (3, 80, False)])
def test_mix_4_keeps_an_earlier_good_save_in_the_target_and_removes_a_bad_one(monkeypatch, mix, first_quality, earlier_save_kept):
    """Every patch saved twice (first at `first_quality`, then at q95): in mix 4 the target is the
    first save when it was good (the input then differs from it only by the q95 save), the original
    when it was not; mix 3 always aims at the original."""
    from enhancer.training import mixture

    monkeypatch.setattr(mixture, "BLIND_SHARE", 0.0)
    monkeypatch.setattr(mixture, "DOUBLE_SHARE", 1.0)
    monkeypatch.setattr(mixture, "DOUBLE_SHARE_MIX4", 1.0)
    recipes = iter([jpeg_damage.ijg_recipe(first_quality), jpeg_damage.ijg_recipe(95)] * 100)
    monkeypatch.setattr(mixture.jpeg_damage, "sample_recipe", lambda rng, grey=False: next(recipes))
    rng = np.random.default_rng(3)
    noisy = np.clip(_photo(600, 600, 2) + rng.normal(0, 12, (600, 600, 3)), 0, 255).astype(np.uint8)
    page = np.full((400, 300, 3), 123, np.uint8)
    sampler = MixtureSampler([noisy], _fonts(), patch_size=64, batch_size=1, seed=0, mix=mix, pages=[page])
    photos = [s for s in (sampler.sample(rng) for _ in range(40)) if s.kind in ("photo", "rephoto")]
    assert photos
    closeness = np.median([psnr(s.damaged, s.clean) for s in photos])
    assert (closeness > 35) == earlier_save_kept, closeness  # about 39 dB kept, 26-30 not


def test_mix_5_trains_on_the_texture_tiles_it_is_given_and_needs_them():
    """About 8 % of mix 5's patches are crops of the texture tiles: with a tile of one grey level,
    every texture patch's clean target is that level; mix 4 never draws it."""
    page = np.full((400, 300, 3), 200, np.uint8)
    tile = np.full((300, 300, 3), 61, np.uint8)
    rng = np.random.default_rng(9)
    with pytest.raises(ValueError, match="enhancer fetch-textures"):
        MixtureSampler([_photo(600, 600, 0)], _fonts(), patch_size=32, batch_size=1, seed=0, mix=5, pages=[page])
    for mix, share in ((5, (0.03, 0.15)), (4, (0, 0))):
        sampler = MixtureSampler([_photo(600, 600, 0)], _fonts(), patch_size=32, batch_size=1, seed=0, mix=mix,
                                 pages=[page], textures=[tile])  # fmt: skip
        drawn = [s for s in (sampler.sample(rng) for _ in range(400)) if s.kind.startswith("texture")]
        assert share[0] <= len(drawn) / 400 <= share[1]
        for sample in drawn:
            assert abs(float(sample.clean.mean()) - 61 / 255) < 0.02  # grain may ride on it, as on every kind


def test_mix_5_validates_texture_at_two_sizes_and_counts_q90_losses_as_harm():
    from enhancer.training.train import HIGH_QUALITY_LABELS, _score, conditioned_validation

    photos = [_photo(256, 256, 1)]
    tiles = [_photo(300, 300, 4)]
    without = conditioned_validation(photos, _fonts(), crop=128, extended=True)
    with_tiles = conditioned_validation(photos, _fonts(), crop=128, extended=True, textures=tiles)
    assert not any(label.startswith("texture") for label in without)
    assert {"texture_q50", "texture_q90", "texture_clean"} <= set(with_tiles)
    assert [truth.shape for _, truth in with_tiles["texture_q50"]] == [(128, 128, 3), (64, 64, 3)]
    (damaged, told), truth = with_tiles["texture_clean"][0]
    assert np.array_equal(damaged, truth) and not told.any()  # the blind path on a clean tile
    assert "gain_texture_q90" in HIGH_QUALITY_LABELS
    row = {"gain_q10": 1.0, "psnr_out_clean": 60.0}
    assert _score({**row, "psnr_out_texture_clean": 40.0}) < _score({**row, "psnr_out_texture_clean": 50.0}) == _score(row)


def test_mix_4_puts_grain_in_document_targets_too():
    page = np.full((400, 300, 3), 123, np.uint8)
    rng = np.random.default_rng(8)
    for mix, grainy in ((3, False), (4, True)):
        sampler = MixtureSampler([_photo(600, 600, 0)], _fonts(), patch_size=32, batch_size=1, seed=0, mix=mix, pages=[page])
        documents = [s for s in (sampler.sample(rng) for _ in range(400)) if s.kind.startswith("document")]
        assert any(np.ptp(s.clean) > 0 for s in documents) == grainy
        assert all(abs(float(s.clean.mean()) - 123 / 255) < 0.02 for s in documents)


@pytest.mark.parametrize("crop_of", ["documents", "textures"])
def test_document_and_texture_crops_shrink_the_source_and_never_enlarge_it(crop_of):
    from enhancer.training.documents import document_crop
    from enhancer.training.textures import texture_crop

    crop_function = {"documents": document_crop, "textures": texture_crop}[crop_of]
    rng = np.random.default_rng(2)
    stripes = np.zeros((300, 300, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: any enlargement would show whole-pixel runs of one level
    for _ in range(20):
        crop = crop_function(rng, [stripes], 200)
        assert crop.shape == (200, 200, 3)
        # shrinking averages neighbouring stripes toward grey; enlarging would keep pure black and white
        assert (np.abs(crop.astype(int) - 127.5) < 127).mean() > 0.5


def test_the_jpeg_inside_a_scanned_pdf_is_read_whole():
    from enhancer.training.documents import pdf_jpeg

    page = _photo(64, 48, 3)
    ok, jpeg_file = cv2.imencode(".jpg", page)
    pdf = b"%PDF-1.4\n4 0 obj <</Type/XObject/Subtype/Image/Filter/DCTDecode>>\nstream\n" + jpeg_file.tobytes()
    pdf += b"\r\nendstream\nendobj\n%%EOF"
    assert pdf_jpeg(pdf) == jpeg_file.tobytes()
    with pytest.raises(ValueError, match="no JPEG"):
        pdf_jpeg(b"%PDF-1.4\n%%EOF")


def test_validation_reports_the_held_out_scans_only_when_given():
    from enhancer.training.train import HIGH_QUALITY_LABELS, conditioned_validation

    photos = [_photo(256, 256, 1)]
    page = np.full((300, 300, 3), 230, np.uint8)
    page[100:110, 20:280] = 20
    without = conditioned_validation(photos, _fonts(), crop=128, extended=True)
    with_pages = conditioned_validation(photos, _fonts(), crop=128, extended=True, pages=[page])
    assert not any(label.startswith("document") for label in without)
    assert {"document_q75", "document_q90"} <= set(with_pages)
    assert len(with_pages["document_q90"]) == 2  # the page at full and half size
    assert {"gain_document_q75", "gain_document_q90"} <= set(HIGH_QUALITY_LABELS)
    hard = conditioned_validation(photos, _fonts(), crop=128, extended=True, pages=[page], hard=True)
    rows = {f"{kind}_q{q}" for kind in ("noisy_page", "was_jpeg") for q in (90, 95)}
    assert rows <= set(hard) and not rows & set(with_pages) and {f"gain_{r}" for r in rows} <= set(HIGH_QUALITY_LABELS)
    assert len(hard["noisy_page_q90"]) == 2 + 2 and len(hard["was_jpeg_q95"]) == 1  # 2 page sizes + 2 simulated scans


def test_an_upscaler_trains_on_the_mix_its_recipe_names():
    """`--mix` reaches an upscaler's content too (it once fell back to mix 1 while the run's
    config.json said 2)."""
    from enhancer.training.upscale_data import UpscaleSampler

    photos = [_photo(600, 640, 5)]
    batches = {mix: UpscaleSampler(photos, _fonts(), 16, 8, 0, 2, mix=mix).batch(0) for mix in (1, 2)}
    assert any(not np.array_equal(a, b) for a, b in zip(batches[1], batches[2]))
    with pytest.raises(ValueError, match="an upscaler trains on mix 1 to 5, not 6"):
        UpscaleSampler(photos, _fonts(), 16, 8, 0, 2, mix=6)
    with pytest.raises(ValueError, match="enhancer fetch-textures"):
        UpscaleSampler(photos, _fonts(), 16, 8, 0, 2, mix=3)


def test_an_upscaler_s_mix_3_draws_the_texture_tiles_it_is_given():
    """With a texture tile of one grey level, the samples whose truth is that level are the texture
    draws (about an eighth; mix 5 more); mix 2 never draws it."""
    from enhancer.training.upscale_data import UpscaleSampler

    level = 77
    tile = np.full((300, 300, 3), level, np.uint8)
    rng = np.random.default_rng(4)

    def share_of_tile(mix):
        sampler = UpscaleSampler([_photo(600, 640, 5)], _fonts(), 16, 1, 0, 2, mix=mix, textures=[tile])
        truths = [sampler.sample(rng)[1] for _ in range(300)]
        return np.mean([np.allclose(t, level / 255, atol=1e-6) for t in truths])

    assert 0.06 <= share_of_tile(3) <= 0.2
    assert 0.22 <= share_of_tile(5) <= 0.4  # mix 5 draws texture 30 % of the time
    assert share_of_tile(2) == 0


def test_an_upscaler_s_mix_3_has_soft_truths():
    """Some mix 3 truths are soft (enlarged from a smaller copy, or blurred): their finest detail is
    gone, which mix 2 truths of the same content never are. Measured as the energy of a one-pixel
    Laplacian relative to the image's, on a photo of one-pixel checks."""
    from enhancer.training import upscale_data
    from enhancer.training.upscale_data import UpscaleSampler

    checks = np.indices((640, 640)).sum(axis=0) % 2 * 200 + 28
    photo = np.repeat(checks[..., None], 3, axis=2).astype(np.uint8)
    rng = np.random.default_rng(5)

    def fine_detail(truth):
        grey = truth.mean(axis=2)
        return np.abs(cv2.Laplacian(grey, cv2.CV_32F)).mean() / max(grey.std(), 1e-6)

    def soft_share(mix):
        sampler = UpscaleSampler([photo], _fonts(), 16, 1, 0, 2, mix=mix, textures=[photo])
        sampler.kinds, sampler.kind_weights = ["photo"], np.array([1.0])
        details = [fine_detail(sampler.sample(rng)[1]) for _ in range(200)]
        return np.mean(np.array(details) < 0.5 * np.median(details))

    assert soft_share(2) == 0
    assert 0.05 <= soft_share(3) <= 0.25


def test_an_upscaler_s_mix_3_validates_on_texture_and_soft_pictures():
    from enhancer.training.upscale_data import upscale_validation

    photos = [_photo(256, 256, 1)]
    tiles = [_photo(200, 200, 2), _photo(200, 200, 3)]
    plain = upscale_validation(photos, _fonts(), 2, crop=128)
    with_tiles = upscale_validation(photos, _fonts(), 2, crop=128, textures=tiles)
    added = {"texture_clean", "texture_q50", "soft_clean"}
    assert not added & set(plain) and added <= set(with_tiles)
    assert len(with_tiles["texture_q50"]) == 2 and len(with_tiles["soft_clean"]) == 1
    (small, condition), truth = with_tiles["texture_q50"][0]
    assert small.shape == (64, 64, 3) and truth.shape == (128, 128, 3) and condition.any()
    assert np.array_equal(with_tiles["clean"][0][1], plain["clean"][0][1])


def test_grey_tiles_come_back_grey_and_colour_tiles_untouched():
    """KeepNeutral: a tile whose pixels are all grey answers with the restoration's luma in every
    channel; a tile with any colour keeps the restoration as it is."""
    from enhancer.training.network import KeepNeutral

    rng = np.random.default_rng(0)
    grey = np.repeat(rng.uniform(0, 1, (1, 16, 16, 1)), 3, axis=-1).astype(np.float32)
    colour = grey.copy()
    colour[0, 3, 5, 2] += 0.01
    restored = rng.uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
    out = np.asarray(KeepNeutral()([restored, np.concatenate([grey, colour])]))
    luma = restored[0] @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(out[0], np.repeat(luma[..., None], 3, axis=-1), atol=1e-6)
    np.testing.assert_array_equal(out[1], restored[1])


def test_fetch_scans_stores_each_page_downscaled_in_its_split(tmp_path, monkeypatch):
    """fetch-scans takes the pages out of OCRmyPDF's source archive (here a stand-in archive:
    tests fetch nothing) and stores training and validation pages apart, at about 150 dpi."""
    import tarfile

    from enhancer.training import documents

    staging = tmp_path / "staging"

    def fake_pip_download(command, check):
        folder = Path(command[command.index("-d") + 1])  # only the archive lands there, as pip leaves it
        resources = staging / documents.RESOURCES
        resources.mkdir(parents=True)
        cv2.imwrite(str(resources / "linn.png"), _photo(400, 300, 1))
        cv2.imwrite(str(resources / "typewriter.png"), _photo(400, 600, 2))
        ok, jpeg_file = cv2.imencode(".jpg", _photo(200, 160, 3))
        (resources / "c02-22.pdf").write_bytes(b"%PDF-1.3\nstream\n" + jpeg_file.tobytes() + b"\nendstream\n")
        with tarfile.open(folder / "ocrmypdf-16.5.0.tar.gz", "w:gz") as tar:
            tar.add(staging / "ocrmypdf-16.5.0", arcname="ocrmypdf-16.5.0")

    monkeypatch.setattr(documents.subprocess, "run", fake_pip_download)
    written = documents.fetch_scans(tmp_path / "scans")
    assert sorted(p.relative_to(tmp_path / "scans").as_posix() for p in written) == [
        "train/c02-22.png", "train/linn.png", "val/typewriter.png"]  # fmt: skip
    shapes = {p.name: cv2.imread(str(p)).shape for p in written}
    assert shapes == {"linn.png": (200, 150, 3), "c02-22.png": (100, 80, 3), "typewriter.png": (100, 150, 3)}


def test_fetch_textures_stores_the_chosen_tiles_in_their_splits(tmp_path, monkeypatch):
    """fetch-textures copies the named pattern tiles out of the unpacked package (here a stand-in
    folder: tests fetch nothing), training and validation tiles apart."""
    from enhancer.training import textures

    def fake_unpack(package, workdir):
        assert package == "krita-data"
        patterns = workdir / package / textures.PATTERNS
        patterns.mkdir(parents=True)
        for stems in textures.TEXTURES.values():
            for i, stem in enumerate(stems):
                cv2.imwrite(str(patterns / f"{stem}.png"), _photo(64, 64, i))
        cv2.imwrite(str(patterns / "01_canvas.png"), _photo(64, 64, 9))  # a tile no split names
        return workdir / package

    monkeypatch.setattr(textures, "unpack_package", fake_unpack)
    written = textures.fetch_textures(tmp_path / "textures")
    stored = {split: sorted(p.stem for p in (tmp_path / "textures" / split).glob("*.png")) for split in ("train", "val")}
    assert stored == {split: sorted(stems) for split, stems in textures.TEXTURES.items()}
    assert len(written) == sum(len(stems) for stems in textures.TEXTURES.values())
    assert not set(textures.TEXTURES["train"]) & set(textures.TEXTURES["val"])


def _fine_detail(truth: np.ndarray) -> float:
    """Energy of a one-pixel Laplacian relative to the image's contrast: low for a soft picture."""
    grey = truth.mean(axis=2)
    return float(np.abs(cv2.Laplacian(grey.astype(np.float32), cv2.CV_32F)).mean() / max(grey.std(), 1e-6))


def test_soften_keeps_the_draws_of_mix_3_and_makes_three_kinds_of_soft_truth():
    """Without sharpening, `synthetic.soften` draws what upscaler mix 3's soften drew (runs resume
    bit for bit); enlarged and blurred truths lose their finest detail, sharpened ones gain some."""
    checks = (np.indices((96, 96)).sum(axis=0) % 2 * 200 + 28).astype(np.uint8)
    image = cv2.GaussianBlur(np.repeat(checks[..., None], 3, axis=2), (0, 0), 0.8)
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    synthetic.soften(image, a, (1.5, 3.0), (1.0, 2.5))
    b.random(), b.uniform(0, 1)  # the branch draw and the factor (or sigma) draw
    assert a.random() == b.random()
    rng = np.random.default_rng(0)
    softened = [synthetic.soften(image, rng, (2.0, 3.0), (1.0, 2.0)) for _ in range(20)]
    assert all(_fine_detail(s) < 0.5 * _fine_detail(image) for s in softened)
    smooth = cv2.GaussianBlur(_photo(96, 96, 2), (0, 0), 2.0)
    sharpened = [synthetic.soften(smooth, rng, (2.0, 3.0), (1.0, 2.0), sharpened_share=1.0) for _ in range(10)]
    assert all(_fine_detail(s) > 1.1 * _fine_detail(smooth) for s in sharpened)


def test_mix_6_keeps_soft_truths_in_the_target_more_often_for_text_and_pages(monkeypatch):
    """Mix 6 makes some truths soft before the save and they stay the target. With `soften`
    replaced by a marker (an image of one grey level), the targets at that level are the soft ones:
    pages are made soft more often than photos; mix 5 never does it."""
    from enhancer.training import mixture

    marker = 123
    monkeypatch.setattr(mixture.synthetic, "soften", lambda image, *args: np.full_like(image, marker))
    page = np.full((400, 400, 3), 200, np.uint8)
    photo = np.full((600, 600, 3), 20, np.uint8)
    tile = np.full((300, 300, 3), 61, np.uint8)
    rng = np.random.default_rng(11)

    def soft_share(mix, kind):
        sampler = MixtureSampler([photo], _fonts(), patch_size=32, batch_size=1, seed=0, mix=mix, pages=[page],
                                 textures=[tile])  # fmt: skip
        sampler.kinds, sampler.kind_weights = [kind], np.array([1.0])
        targets = [sampler.sample(rng).clean for _ in range(400)]
        return float(np.mean([abs(t.mean() - marker / 255) < 0.03 for t in targets]))

    assert soft_share(5, "document") == 0
    assert 0.2 <= soft_share(6, "document") <= 0.4
    assert 0.05 <= soft_share(6, "photo") <= 0.2


def test_mix_6_validates_soft_pages_and_counts_their_losses_as_harm():
    from enhancer.training.train import HIGH_QUALITY_LABELS, conditioned_validation

    photos = [_photo(256, 256, 1)]
    pages = [_photo(300, 300, 4)]
    mix5 = conditioned_validation(photos, _fonts(), crop=128, extended=True, pages=pages, hard=True)
    mix6 = conditioned_validation(photos, _fonts(), crop=128, extended=True, pages=pages, hard=True, soft=True)
    assert set(mix6) - set(mix5) == {"soft_page_q75", "soft_page_q90"}
    assert all(np.array_equal(a[1], b[1]) for label in mix5 for a, b in zip(mix5[label], mix6[label]))
    # the documents (the page and its half) and the 4 simulated scans, each enlarged and sharpened
    assert len(mix6["soft_page_q90"]) == 2 * (2 + 4)
    assert {"gain_soft_page_q75", "gain_soft_page_q90"} <= set(HIGH_QUALITY_LABELS)


@pytest.mark.parametrize("scale", [2, 4])
def test_an_upscaler_s_mix_4_enlarges_soft_truths_from_more_than_its_scale(monkeypatch, scale):
    """Mix 3 enlarged soft truths from 1.5-3x smaller, which at scale 2 and 4 a small image often
    cannot show; mix 4 enlarges from more than `scale` times smaller. Read from the factors that
    reach the resize, with every sample soft and every soft truth enlarged."""
    from enhancer.training import upscale_data
    from enhancer.training.upscale_data import UpscaleSampler

    factors = []
    real_soften = synthetic.soften

    def spy(image, rng, enlarged_from, blur_sigma, sharpened_share=0.0):
        factors.append(enlarged_from)
        return real_soften(image, rng, enlarged_from, blur_sigma, sharpened_share)

    monkeypatch.setattr(upscale_data, "SOFT_SHARE", 1.0)
    monkeypatch.setattr(upscale_data.synthetic, "soften", spy)
    tile = np.full((300, 300, 3), 90, np.uint8)
    for mix in (3, 4):
        factors.clear()
        sampler = UpscaleSampler([_photo(600, 640, 5)], _fonts(), 16, 4, 0, scale, mix=mix, textures=[tile])
        sampler.batch(0)
        low = min(f[0] for f in factors)
        assert (low > scale) if mix == 4 else (low < scale)


def test_an_upscaler_s_mix_4_validates_soft_photos_its_small_image_shows():
    from enhancer.training.upscale_data import upscale_validation

    photos = [_photo(256, 256, 1)]
    tiles = [_photo(200, 200, 2)]
    mix3 = upscale_validation(photos, _fonts(), 2, crop=128, textures=tiles)
    mix4 = upscale_validation(photos, _fonts(), 2, crop=128, textures=tiles, soft_from=4)
    assert set(mix3) == set(mix4)
    assert _fine_detail(mix4["soft_clean"][0][1]) < _fine_detail(mix3["soft_clean"][0][1])


def test_mix_7_keeps_the_first_save_s_grid_in_some_re_saves(monkeypatch):
    """Mix 4 moves a twice-saved patch's first grid by 1-15 px; mix 7 keeps it (phase 0) in a share of
    them. With the JPEG round trip made an identity that records its inputs, the second save's input
    is the first save's input cropped at the shift: at its top-left corner exactly when the grid is kept."""
    from enhancer.training import mixture

    monkeypatch.setattr(mixture, "BLIND_SHARE", 0.0)
    monkeypatch.setattr(mixture, "DOUBLE_SHARE_MIX4", 1.0)
    inputs = []
    monkeypatch.setattr(mixture.jpeg_damage, "jpeg_round_trip", lambda image, recipe: inputs.append(image) or image)
    noise = np.random.default_rng(1).integers(0, 256, (600, 600, 3)).astype(np.uint8)
    page = np.full((400, 300, 3), 200, np.uint8)
    tile = np.full((300, 300, 3), 61, np.uint8)
    rng = np.random.default_rng(2)

    def same_grid_share(mix):
        sampler = MixtureSampler([noise], _fonts(), patch_size=32, batch_size=1, seed=0, mix=mix, pages=[page],
                                 textures=[tile])  # fmt: skip
        sampler.kinds, sampler.kind_weights = ["photo"], np.array([1.0])
        same = []
        for _ in range(200):
            inputs.clear()
            sampler.sample(rng)
            first, second = inputs
            same.append(np.array_equal(second, first[:32, :32]))
        return float(np.mean(same))

    assert same_grid_share(6) == 0
    assert 0.25 <= same_grid_share(7) <= 0.55


def test_mix_7_validates_same_grid_re_saves_and_counts_their_losses_as_harm():
    from enhancer.training.train import HIGH_QUALITY_LABELS, conditioned_validation

    photos = [_photo(256, 256, 1)]
    mix6 = conditioned_validation(photos, _fonts(), crop=128, extended=True, hard=True, soft=True)
    mix7 = conditioned_validation(photos, _fonts(), crop=128, extended=True, hard=True, soft=True, resaved=True)
    assert set(mix7) - set(mix6) == {"resaved_q90", "resaved_q95"}
    (damaged, told), truth = mix7["resaved_q90"][0]
    assert told.any() and 40 < psnr(damaged, truth) < 60  # an earlier q85 save, saved again at q90
    assert {"gain_resaved_q90", "gain_resaved_q95"} <= set(HIGH_QUALITY_LABELS)
