"""The model pipeline: aligned training pairs, resumable training, export round-trip."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from enhancer.training import network
from enhancer.training.dataset import (
    Degradation,
    PatchSampler,
    degrade_patch,
    prepare_photos,
    psnr,
    sample_quality,
)


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth synthetic 'photo' with edges (uint8 BGR), so JPEG damage is measurable."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 3)
    cv2.rectangle(image, (w // 4, h // 4), (w // 2, h // 2), (250, 30, 90), -1)
    return np.clip(image, 0, 255).astype(np.uint8)


def _rgb01(bgr):
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


@pytest.mark.parametrize("shift", [(0, 0), (3, 5), (7, 7)])
def test_degraded_patch_is_aligned_with_its_clean_target(shift):
    image = _photo(200, 240, 0)
    top, left, size = 40, 56, 64
    recipe = Degradation(quality=60, subsampling_444=True, second_quality=None, grayscale=False, shift=shift, dihedral=0)
    damaged, clean = degrade_patch(image, top, left, size, recipe)

    assert damaged.shape == clean.shape == (size, size, 3)
    assert np.array_equal(clean, _rgb01(image[top : top + size, left : left + size]))
    aligned = psnr(damaged, clean)
    off_by_one = psnr(damaged[1:, 1:], clean[:-1, :-1])
    assert aligned > 30 and aligned > off_by_one + 3


def test_same_dihedral_transform_applied_to_both_halves_of_a_pair():
    image = _photo(160, 160, 1)
    for k in range(8):
        recipe = Degradation(quality=90, subsampling_444=True, second_quality=None, grayscale=False, shift=(0, 0), dihedral=k)
        damaged, clean = degrade_patch(image, 16, 16, 96, recipe)
        assert psnr(damaged, clean) > 35, k


def test_grayscale_recipe_gives_gray_pairs():
    recipe = Degradation(quality=20, subsampling_444=False, second_quality=30, grayscale=True, shift=(2, 1), dihedral=3)
    damaged, clean = degrade_patch(_photo(160, 160, 2), 20, 20, 64, recipe)
    for patch in (damaged, clean):
        assert np.allclose(patch[..., 0], patch[..., 1], atol=2 / 255) and np.allclose(patch[..., 1], patch[..., 2], atol=2 / 255)


def test_sampler_is_deterministic_per_step_and_covers_low_and_high_quality():
    sampler = PatchSampler([_photo(200, 200, 3), _photo(150, 300, 4)], patch_size=32, batch_size=4, seed=7)
    a, b = sampler.batch(5), sampler.batch(5)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(sampler.batch(6)[1], a[1])
    qualities = [sample_quality(np.random.default_rng(i)) for i in range(2000)]
    assert min(qualities) == 5 and max(qualities) == 95
    assert np.mean(np.array(qualities) <= 30) > 0.4  # weighted toward heavy damage (uniform: 0.29)
    for q in (5, 10, 30, 50, 70):
        assert q in qualities


def test_prepare_photos_downscales_and_holds_out_whole_images(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"p{i}.jpg"), _photo(120, 200, i))
    counts = prepare_photos(src, tmp_path / "out", validation=("p1",))
    assert counts == {"train": 2, "val": 1}
    assert (tmp_path / "out/val/p1.png").exists()
    assert cv2.imread(str(tmp_path / "out/train/p0.png")).shape == (60, 100, 3)


@pytest.fixture
def tiny_dataset(tmp_path):
    for split, seeds in (("train", (10, 11)), ("val", (12,))):
        (tmp_path / split).mkdir()
        for s in seeds:
            cv2.imwrite(str(tmp_path / split / f"{s}.png"), _photo(96, 96, s))
    return tmp_path


def _tiny_config(data, run):
    from enhancer.training.train import TrainConfig

    return TrainConfig(data_dir=str(data), run_dir=str(run), steps=2, steps_per_epoch=1, batch_size=2,
                       patch_size=32, warmup_steps=1, val_crop=64)  # fmt: skip


def test_training_runs_logs_and_resumes_exactly_where_it_stopped(tiny_dataset, tmp_path):
    import keras

    from enhancer.training.train import train

    straight = train(_tiny_config(tiny_dataset, tmp_path / "straight"), progress=False)
    # Same recipe, interrupted after the first step (time budget 0 stops at the first epoch end).
    resumed_dir = tmp_path / "resumed"
    train(_tiny_config(tiny_dataset, resumed_dir), max_minutes=0, progress=False)
    assert json.loads((resumed_dir / "checkpoint/state.json").read_text())["step"] == 1
    train(_tiny_config(tiny_dataset, resumed_dir), progress=False)

    rows = (straight / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("step,") and "gain_q10" in rows[0]
    data = json.loads((straight / "data.json").read_text())  # which photos, for export's metadata.json
    assert [i["name"] for i in data["train"]["images"]] == ["10.png", "11.png"] and data["train"]["count"] == 2
    assert [i["name"] for i in data["val"]["images"]] == ["12.png"] and data["val"]["fingerprint"]
    assert len((resumed_dir / "log.csv").read_text().strip().splitlines()) == 3
    a, b = network.build("dejpeg"), network.build("dejpeg")
    a.load_weights(str(straight / "final.weights.h5"))
    b.load_weights(str(resumed_dir / "final.weights.h5"))
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(wa, wb, atol=1e-6)
    # Training moved the last layer away from its zero (identity) start.
    assert np.abs(a.get_layer("half_out").get_weights()[0]).max() > 0
    keras.backend.clear_session()


def test_export_round_trips_and_accepts_any_size(tmp_path):
    import tensorflow as tf

    from enhancer.training.export import export_saved_model

    model = network.build("dejpeg")
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.05, w.shape).astype("float32") for w in model.get_weights()])
    out = export_saved_model(model, tmp_path / "m", {"note": "test"})
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]

    x = rng.uniform(0.1, 0.9, (2, 64, 48, 3)).astype("float32")
    expected = np.clip(model(x).numpy(), 0, 1)
    got = serve(images=tf.constant(x))["enhanced"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - x).max() > 1e-3  # the random net really changes the image

    odd = rng.uniform(0, 1, (1, 37, 53, 3)).astype("float32")
    assert serve(images=tf.constant(odd))["enhanced"].shape == (1, 37, 53, 3)
    assert json.loads((out / "metadata.json").read_text())["parameters"] == model.count_params()


def test_dejpeg_budget_and_reach():
    model = network.build("dejpeg")
    # The served net must stay CPU-friendly and its reach must fit the default tile overlap (32).
    assert network.macs_per_pixel(model) < 40_000
    assert 16 <= network.receptive_field_reach(model) <= 32


def test_channel_permutation_applies_to_both_halves_of_a_pair():
    image = _photo(160, 160, 5)
    recipe = Degradation(quality=90, subsampling_444=True, second_quality=None, grayscale=False,
                         shift=(0, 0), dihedral=0, channel_order=(2, 0, 1))  # fmt: skip
    damaged, clean = degrade_patch(image, 16, 16, 64, recipe)
    expected = _rgb01(np.ascontiguousarray(image[16:80, 16:80][..., [2, 0, 1]]))
    assert np.array_equal(clean, expected)
    assert psnr(damaged, clean) > 35


def test_relative_loss_charges_harm_to_a_good_patch_more_than_to_a_damaged_one():
    import tensorflow as tf

    from enhancer.training.train import RELATIVE_LOSS_FLOOR, patch_loss

    rng = np.random.default_rng(0)
    clean = rng.uniform(0.2, 0.8, (2, 16, 16, 3)).astype("float32")
    # Patch 0 is heavily damaged (MSE 1e-3), patch 1 nearly perfect (MSE 1e-5).
    # Checkerboard signs: the cross term with a constant harm below cancels exactly.
    signs = (-1.0) ** np.indices(clean.shape[1:]).sum(axis=0)
    noise = (signs[None] * np.array([0.1**1.5, 0.1**2.5])[:, None, None, None]).astype("float32")
    damaged = clean + noise

    def loss(restored):
        return float(patch_loss("relative", tf.constant(restored), tf.constant(clean), tf.constant(damaged)))

    before = np.mean((damaged - clean) ** 2, axis=(1, 2, 3))
    assert loss(damaged) == pytest.approx(np.mean(before / (before + RELATIVE_LOSS_FLOOR)), rel=1e-4)
    assert loss(clean) == 0
    # The same added error (MSE 1e-4) on the good patch costs more than on the damaged one...
    harm = np.zeros_like(clean)
    harm[1] = 0.01
    on_good = loss(damaged + harm) - loss(damaged)
    harm = harm[::-1].copy()
    on_bad = loss(damaged + harm) - loss(damaged)
    assert on_good > 3 * on_bad > 0
    # ... whereas plain MSE charges both alike.
    mse = lambda r: float(patch_loss("mse", tf.constant(r), tf.constant(clean), tf.constant(damaged)))  # noqa: E731
    assert mse(damaged + harm[::-1]) - mse(damaged) == pytest.approx(mse(damaged + harm) - mse(damaged), rel=0.2)


def test_saved_weights_are_the_moving_average_not_the_last_step(tiny_dataset, tmp_path):
    import dataclasses

    import keras

    from enhancer.training.train import train

    plain = train(dataclasses.replace(_tiny_config(tiny_dataset, tmp_path / "plain"), ema_decay=0), progress=False)
    averaged = train(_tiny_config(tiny_dataset, tmp_path / "averaged"), progress=False)
    raw_plain, final_plain = network.build("dejpeg"), network.build("dejpeg")
    raw_plain.load_weights(str(plain / "checkpoint/model.weights.h5"))
    final_plain.load_weights(str(plain / "final.weights.h5"))
    raw, final = network.build("dejpeg"), network.build("dejpeg")
    raw.load_weights(str(averaged / "checkpoint/model.weights.h5"))
    final.load_weights(str(averaged / "final.weights.h5"))
    # Without averaging the saved weights are the last step's; with it they are not, and the same
    # seed gave the same raw weights in both runs.
    for a, b in zip(raw_plain.get_weights(), final_plain.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(raw_plain.get_weights(), raw.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    last = final.get_layer("half_out").get_weights()[0]
    assert not np.allclose(last, raw.get_layer("half_out").get_weights()[0], atol=1e-7)
    assert np.abs(last).max() > 0
    keras.backend.clear_session()


def test_model_card_reports_the_runs_own_log_and_recipe(tmp_path):
    from enhancer.training import model_card

    log_csv = (
        "step,elapsed_s,lr,loss,train_loss,gain_q10,gain_q30,gain_q90\n"
        "500,240.0,0.0007,relative,0.9,0.41,0.22,-0.05\n"
        "1000,480.0,0.0006,relative,0.8,0.73,0.35,0.02\n"
    )
    meta = {"architecture": "dejpeg", "parameters": 391660, "macs_per_pixel": 30900, "receptive_field_reach": 29,
            "recipe": {"loss": "relative", "steps": 1000, "ema_decay": 0.999}, "weights": "final",
            "trained_steps": 1000, "training_minutes": 8.0, "log": log_csv}  # fmt: skip
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    card = model_card.render(tmp_path)
    assert "- loss: relative" in card and "- ema_decay: 0.999" in card
    assert "| 500 | 4 | relative | +0.41 | +0.22 | -0.05 |" in card
    assert "| 1000 | 8 | relative | +0.73 | +0.35 | +0.02 |" in card
    assert "It fine-tunes" not in card  # no base run recorded, none described
    assert "- Wall time: 8 minutes on" in card

    def run(name, steps, minutes, gain, base=None):
        log = f"step,elapsed_s,lr,loss,train_loss,gain_q10,gain_q30,gain_q90\n{steps},{minutes * 60},1e-05,relative,0.5,{gain},0.77,-0.01\n"
        record = {"recipe": {"run_dir": f"runs/{name}", "architecture": "dejpeg", "loss": "relative", "steps": steps,
                             "batch_size": 16, "patch_size": 96, "learning_rate": 7e-4, "seed": 1234},
                  "weights_file": "final.weights.h5", "log": log, "trained_steps": steps, "training_minutes": minutes}  # fmt: skip
        return {**record, "base_run": base} if base else record

    meta["base_run"] = run("second", 3000, 20.0, 1.42, base=run("first", 16000, 82.0, 1.22))
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    card = model_card.render(tmp_path)
    # A fine-tune of a fine-tune: the card gives every stage's recipe and log, and the total time.
    assert "- Wall time: 8 minutes (110 minutes with the runs it fine-tunes, below) on" in card
    assert "It fine-tunes `final.weights.h5` from the run `runs/second`" in card
    assert "It fine-tunes `final.weights.h5` from the run `runs/first`" in card
    assert card.index("runs/second") < card.index("runs/first")
    assert "| 3000 | 20 | relative | +1.42 | +0.77 | -0.01 |" in card
    assert "| 16000 | 82 | relative | +1.22 | +0.77 | -0.01 |" in card


def test_model_card_names_the_training_mix_and_its_scanned_pages():
    from enhancer.training import model_card

    mix_2 = "\n".join(model_card._mix_lines({"recipe": {"mix": 2}}))
    mix_3 = "\n".join(model_card._mix_lines({"recipe": {"mix": 3, "init_weights": "training-runs/a/best.weights.h5"}}))
    assert "Mix 2 (this run)" in mix_2 and "Mix 3" not in mix_2
    assert "Mix 2:" in mix_3 and "Mix 3 (this run) adds real scanned pages as 10 % of patches" in mix_3
    assert "`linn.png`, `c02-22.png`" in mix_3 and "(`typewriter.png`) at q75 and q90" in mix_3
    assert "the other kinds make room (photos\n  50 %)" in mix_3
    assert "Started from `training-runs/a/best.weights.h5`" in mix_3
    assert model_card._mix_lines({"recipe": {"mix": 1}}) == []


def test_model_card_marks_only_the_run_s_own_mix_and_describes_mix_6_from_the_sampler():
    from enhancer.training import mixture, model_card

    mix_5 = "\n".join(model_card._mix_lines({"recipe": {"mix": 5}}))
    mix_6 = "\n".join(model_card._mix_lines({"recipe": {"mix": 6}}))
    assert "Mix 5 (this run)" in mix_5 and "Mix 6" not in mix_5
    assert "Mix 5 adds fine grey texture" in mix_6 and "Mix 6 (this run) adds soft truths" in mix_6
    low, high = mixture.SOFT_ENLARGED_FROM_MIX6
    assert f"enlarged (bicubic, with its ringing) from {low:g}-{high:g}x smaller" in mix_6
    assert f"text {round(100 * mixture.SOFT_SHARE_MIX6['text'])} %" in mix_6
    mix_7 = "\n".join(model_card._mix_lines({"recipe": {"mix": 7}}))
    assert "Mix 6 adds soft truths" in mix_7 and "Mix 7 (this run) adds re-saves at the same block grid" in mix_7


def test_an_upscaler_s_card_gives_mix_4_s_enlargement_in_its_own_scale():
    from enhancer.training import model_card, upscale_data

    for scale in (2, 4):
        text = "\n".join(model_card._upscaler_mix4_lines(scale))
        low, high = (f * scale for f in upscale_data.SOFT_ENLARGED_FROM_MIX4)
        assert f"from {low:g}-{high:g}x smaller" in text and f"enlarged from {2 * scale}x smaller" in text


def test_pass_through_threshold_is_where_the_gain_stays_negative():
    from enhancer.training.evaluate import suggested_pass_through

    gains = {70: 0.2, 75: 0.1, 80: -0.01, 85: 0.02, 88: -0.1, 90: -0.2, 95: -0.4}
    assert suggested_pass_through(gains) == 88  # 80 is negative, but 85 is not: start above it
    assert suggested_pass_through({70: 0.2, 95: 0.1}) == 101  # never negative: never skip
    assert suggested_pass_through({70: -0.1, 95: -0.2}) == 70


def test_export_records_the_chain_of_runs_a_fine_tune_started_from(tmp_path):
    from enhancer.training.commands import _run_record

    def make_run(name, step, elapsed_s, init_weights=None):
        run = tmp_path / name
        (run / "checkpoint").mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"run_dir": str(run), "init_weights": init_weights}))
        (run / "checkpoint" / "state.json").write_text(json.dumps({"step": step, "elapsed_s": elapsed_s}))
        (run / "log.csv").write_text(f"step,elapsed_s\n{step},{elapsed_s}\n")
        return run

    first = make_run("first", 16000, 4920.0)
    second = make_run("second", 14000, 5400.0, init_weights=str(first / "final.weights.h5"))
    third = make_run("third", 3500, 1320.0, init_weights=str(second / "best.weights.h5"))

    record = _run_record(third)
    assert (record["trained_steps"], record["training_minutes"]) == (3500, 22.0)
    assert record["log"] == "step,elapsed_s\n3500,1320.0\n"
    middle = record["base_run"]
    assert (middle["recipe"]["run_dir"], middle["weights_file"], middle["trained_steps"]) == (str(second), "best.weights.h5", 14000)
    oldest = middle["base_run"]
    assert (oldest["recipe"]["run_dir"], oldest["weights_file"], oldest["training_minutes"]) == (str(first), "final.weights.h5", 82.0)
    assert "base_run" not in oldest


def test_a_committed_run_record_without_its_checkpoint_reports_its_log_s_last_epoch(tmp_path):
    """training-runs/ keeps a finished run's recipe, log and weights, not its checkpoint: a run
    continued from there still records how far and how long its base trained."""
    from enhancer.training.commands import _run_record

    base = tmp_path / "training-runs" / "upscale-x2"
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps({"run_dir": "runs/upscale-x2", "init_weights": None}))
    (base / "log.csv").write_text("step,elapsed_s\n500,300.0\n4000,6574.8\n")
    run = tmp_path / "upscale-x2b"
    (run / "checkpoint").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"run_dir": str(run), "init_weights": str(base / "best.weights.h5")}))
    (run / "checkpoint" / "state.json").write_text(json.dumps({"step": 9000, "elapsed_s": 3536.0}))

    record = _run_record(run)
    assert (record["base_run"]["trained_steps"], round(record["base_run"]["training_minutes"], 2)) == (4000, 109.58)


def test_prefetcher_ends_at_stop_and_at_once_for_a_finished_run():
    """A rerun of a finished run used to wait forever for a batch (the stream never ended)."""
    from enhancer.training.train import _Prefetcher

    class Counting:
        def batch(self, step):
            return step * 10

    assert list(_Prefetcher(Counting(), 3, 6)) == [(3, 30), (4, 40), (5, 50)]
    assert list(_Prefetcher(Counting(), 6, 6)) == []


def test_prefetcher_raises_the_sampler_s_error_in_the_training_loop():
    from enhancer.training.train import _Prefetcher

    class Broken:
        def batch(self, step):
            if step == 2:
                raise ValueError("no photo is large enough")
            return step

    stream = _Prefetcher(Broken(), 0, 5)
    assert next(stream) == (0, 0) and next(stream) == (1, 1)
    with pytest.raises(ValueError, match="no photo is large enough"):
        next(stream)


def test_an_upscaler_starts_from_a_restorer_or_continues_from_its_own_weights(tmp_path):
    """`--init-weights` for an upscaler: a restorer's file fills only its front; an upscaler's file
    (a run to continue) fills every layer."""

    def upscaler():
        return network.build_upscaler(2, head_channels=8, head_blocks=1, restorer=network.build_dejpeg_q(8, 16, 1, name="restorer"))

    def perturbed(model):
        rng = np.random.default_rng(0)
        for var in model.weights:
            var.assign(rng.normal(0, 0.1, var.shape).astype("float32"))
        return model

    trained = perturbed(upscaler())
    trained.save_weights(tmp_path / "upscaler.weights.h5")
    trained.get_layer("restorer").save_weights(tmp_path / "restorer.weights.h5")
    assert network.holds_upscaler(str(tmp_path / "upscaler.weights.h5"))
    assert not network.holds_upscaler(str(tmp_path / "restorer.weights.h5"))

    continued = upscaler()
    network.load_init_weights(continued, str(tmp_path / "upscaler.weights.h5"), scale=2)
    for got, want in zip(continued.weights, trained.weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())

    fresh = upscaler()
    front = {id(w) for w in fresh.get_layer("restorer").weights}
    head_before = [w.numpy() for w in fresh.weights if id(w) not in front]
    network.load_init_weights(fresh, str(tmp_path / "restorer.weights.h5"), scale=2)
    for got, want in zip(fresh.get_layer("restorer").weights, trained.get_layer("restorer").weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    head_after = [w.numpy() for w in fresh.weights if id(w) not in front]
    assert len(head_after) > 0
    for before, after in zip(head_before, head_after):
        np.testing.assert_array_equal(before, after)  # the head keeps its own initialisation
