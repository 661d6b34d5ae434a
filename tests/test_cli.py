"""The `enhancer` command: enhance a folder or a file in-process; serve's argument handling."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
from helpers import MODEL_DIR, decode_bytes, encode_bgr, photo_like

from enhancer import cli


def _run(*args: str) -> int:
    return cli.main(["enhance", *args, "--model-dir", str(MODEL_DIR), "--tile-size", "128", "-q"])


def test_enhance_folder_writes_one_output_per_input(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    inputs = {
        "a.jpg": photo_like(70, 90, seed=1),
        "b.png": photo_like(200, 150, seed=2, channels=4),
        "c.webp": photo_like(33, 47, seed=3),
        "d.png": photo_like(40, 40, seed=4, channels=1)[:, :, 0],
        "a.png": photo_like(20, 30, seed=5),  # same stem as a.jpg
    }
    for name, pixels in inputs.items():
        (src / name).write_bytes(encode_bgr(pixels, "." + name.split(".")[1]))
    (src / "notes.txt").write_text("not an image")

    assert _run(str(src)) == 0

    out = tmp_path / "photos_enhanced"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a_jpg_enhanced.png", "a_png_enhanced.png", "b_enhanced.png", "c_enhanced.png", "d_enhanced.png"]
    for name, pixels in inputs.items():
        stem, ext = name.split(".")
        target = out / (f"{stem}_{ext}_enhanced.png" if stem == "a" else f"{stem}_enhanced.png")
        result = decode_bytes(target.read_bytes())
        assert result.shape == pixels.shape, name  # same size, same channels (alpha, grey kept)


def test_enhance_single_file_to_a_named_jpeg(tmp_path):
    src = tmp_path / "in.png"
    pixels = photo_like(60, 80, seed=6)
    src.write_bytes(encode_bgr(pixels, ".png"))
    dst = tmp_path / "out" / "result.jpg"
    assert _run(str(src), str(dst)) == 0
    data = dst.read_bytes()
    assert data[:3] == b"\xff\xd8\xff"
    assert decode_bytes(data).shape == pixels.shape


def test_enhance_matches_the_model_run_directly(tmp_path, saved_model):
    """The CLI is the same decode -> tiles -> model -> stitch path as the library."""
    from enhancer import imaging, tiling

    src = tmp_path / "x.png"
    src.write_bytes(encode_bgr(photo_like(150, 170, seed=7), ".png"))
    assert _run(str(src)) == 0
    from enhancer.samples import OUTPUT_DTYPE, dtype_for_depth

    image = imaging.decode(src.read_bytes())
    # tiled as the CLI's settings say: no border context, bucketed shapes only where batches are > 1 (GPU)
    from enhancer.config import Settings

    buckets = Settings(_env_file=None).for_device(saved_model.device_kind).uses_tile_buckets
    plan = tiling.plan_tiles(150, 170, 128, 32, multiple=saved_model.spec.size_multiple, context=0, buckets=buckets)
    outputs = tiling.run_in_batches(tiling.split(image.pixels, plan), saved_model.forward, 4, output_dtype=OUTPUT_DTYPE)
    rgb = tiling.stitch(outputs, plan, dtype=dtype_for_depth(image.info.bit_depth))  # the model's outputs as 16-bit samples
    expected = imaging.encode(rgb, imaging.OutputFormat.png, info=image.info)
    np.testing.assert_array_equal(decode_bytes((tmp_path / "x_enhanced.png").read_bytes()), decode_bytes(expected))


def test_enhance_reports_unreadable_files_and_fails(tmp_path, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    (src / "good.png").write_bytes(encode_bgr(photo_like(20, 20), ".png"))
    (src / "broken.png").write_bytes(encode_bgr(photo_like(50, 50), ".png")[:80])
    assert _run(str(src)) == 1
    assert "broken.png" in capsys.readouterr().err
    assert (tmp_path / "photos_enhanced" / "good_enhanced.png").is_file()


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        _run(str(tmp_path / "nothing"))


def test_help_lists_serve_enhance_and_training_commands():
    out = subprocess.run([sys.executable, "-m", "enhancer.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("serve", "enhance", "train", "export", "evaluate"):
        assert command in out


def test_serve_refuses_to_start_without_a_model(tmp_path, monkeypatch):
    monkeypatch.setenv("ENHANCER_MODEL_DIR", str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match="no SavedModel"):
        cli.main(["serve", "--port", "8765"])


def test_enhance_writes_a_good_jpeg_unchanged_and_says_so(tmp_path, capsys):
    from enhancer.config import Settings

    default = Settings.model_fields["pass_through_jpeg_quality"].default
    src = tmp_path / "good.jpg"
    src.write_bytes(encode_bgr(photo_like(50, 60, seed=8), ".jpg", cv2.IMWRITE_JPEG_QUALITY, default))
    assert cli.main(["enhance", str(src), "--model-dir", str(MODEL_DIR), "--tile-size", "128"]) == 0
    assert np.array_equal(decode_bytes((tmp_path / "good_enhanced.png").read_bytes()), decode_bytes(src.read_bytes()))
    assert f"jpeg-quality={default} >= ENHANCER_PASS_THROUGH_JPEG_QUALITY" in capsys.readouterr().err


def test_enhance_refuses_an_overlap_below_the_model_s_reach(tmp_path):
    src = tmp_path / "in.png"
    src.write_bytes(encode_bgr(photo_like(20, 20), ".png"))
    with pytest.raises(SystemExit, match=r"ENHANCER_TILE_OVERLAP \(16\) is below the receptive-field reach of model 'dejpeg' \(29 px\)"):
        cli.main(["enhance", str(src), "--model-dir", str(MODEL_DIR), "--tile-size", "128", "--tile-overlap", "16", "-q"])
    assert not (tmp_path / "in_enhanced.png").exists()


def test_enhance_scale_2_uses_the_configured_upscaler_and_names_the_outputs_x2(tmp_path, monkeypatch, upscaler_dirs, upscalers):
    from enhancer import imaging, tiling
    from enhancer.conditioning import quantization_vector

    monkeypatch.setenv("ENHANCER_UPSCALE_MODEL_DIRS", ",".join(str(p) for p in upscaler_dirs.values()))
    src = tmp_path / "photos"
    src.mkdir()
    data = encode_bgr(photo_like(50, 70, seed=9), ".jpg", cv2.IMWRITE_JPEG_QUALITY, 30)
    (src / "small.jpg").write_bytes(data)
    args = ["enhance", str(src), "--model-dir", str(MODEL_DIR), "--tile-size", "128", "--tile-overlap", "48", "-q"]
    with pytest.raises(SystemExit, match=r"the model in .*dejpeg has scale 1, not 2; leave out --scale"):
        cli.main([*args, "--scale", "2"])  # --model-dir names the restorer
    assert cli.main([a for a in args if a not in ("--model-dir", str(MODEL_DIR))] + ["--scale", "2"]) == 0
    out = decode_bytes((tmp_path / "photos_x2" / "small_x2.png").read_bytes())
    assert out.shape == (100, 140, 3)
    image = imaging.decode(data)
    vector = quantization_vector(image.info)
    rgb = tiling.enhance_tiled(
        image.pixels, lambda b: upscalers[2].forward(b, {"quantization": np.broadcast_to(vector, (len(b), 130))}),
        96, 48, 1, multiple=16, scale=2,  # the upscaler's tiles: half of 128, at least twice the overlap
        context=0, buckets=False,  # the CLI's defaults: no mirrored border context, no buckets at batch 1
    )  # fmt: skip
    expected = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)[:, :, ::-1]
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    # a scale no configured model has
    monkeypatch.setenv("ENHANCER_UPSCALE_MODEL_DIRS", str(upscaler_dirs[2]))
    with pytest.raises(SystemExit, match=r"no model with scale 4 is configured; the models are .*upscale-x2 \(scale 2\)"):
        cli.main([a for a in args if a not in ("--model-dir", str(MODEL_DIR))] + ["--scale", "4"])
