"""Training provenance: `enhancer dataset` refuses a split where a photo (by its pixels) is in both
train and validation, or also in the test set; a run records which photos it trained and validated
on, and `enhancer export` copies that record into metadata.json."""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import pytest

from enhancer.training.commands import _dataset, _run_record
from enhancer.training.dataset import SplitOverlapError, content_hash, data_record, prepare_photos


def _photo(seed: int, h: int = 80, w: int = 120) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"p{i}.png"), _photo(i))
    return folder


def test_content_hash_follows_the_pixels_not_the_file(tmp_path):
    pixels = _photo(7)
    cv2.imwrite(str(tmp_path / "a.png"), pixels)
    cv2.imwrite(str(tmp_path / "b.bmp"), pixels)
    a, b = (content_hash(cv2.imread(str(tmp_path / name))) for name in ("a.png", "b.bmp"))
    assert a == b != content_hash(_photo(8))


def test_the_same_photo_under_two_names_cannot_be_split_across_train_and_val(source, tmp_path):
    cv2.imwrite(str(source / "copy_of_p1.bmp"), _photo(1))  # p1 again, another name and format
    out = tmp_path / "out"
    with pytest.raises(SplitOverlapError, match=r"copy_of_p1.bmp \(train\) = p1.png \(val\)"):
        prepare_photos(source, out, validation=("p1",))
    assert not out.exists()  # refused before anything was written
    # held out under both names, it is one validation photo twice: allowed
    assert prepare_photos(source, out, validation=("p1", "copy_of_p1")) == {"train": 2, "val": 2}


def test_a_photo_of_the_test_set_is_refused_in_either_split(source, tmp_path):
    testset = tmp_path / "testset"
    testset.mkdir()
    cv2.imwrite(str(testset / "held_out.png"), _photo(2))
    with pytest.raises(SplitOverlapError, match=r"p2.png \(train\) = held_out.png \(test\)"):
        prepare_photos(source, tmp_path / "out", validation=("p1",), testset=testset)
    with pytest.raises(SplitOverlapError, match=r"p2.png \(val\) = held_out.png \(test\)"):
        prepare_photos(source, tmp_path / "out", validation=("p2",), testset=testset)
    (testset / "held_out.png").unlink()
    assert prepare_photos(source, tmp_path / "out", validation=("p2",), testset=testset) == {"train": 2, "val": 1}


def test_a_file_an_earlier_run_left_in_the_other_split_is_refused(source, tmp_path):
    out = tmp_path / "out"
    prepare_photos(source, out, validation=("p1",))
    with pytest.raises(SplitOverlapError, match=r"already holds p0.png, which this run puts in val/"):
        prepare_photos(source, out, validation=("p0",))
    assert prepare_photos(source, out, validation=("p1",)) == {"train": 2, "val": 1}  # the same split again: fine


def test_the_dataset_command_says_why_it_refuses(source, tmp_path):
    cv2.imwrite(str(source / "dup.png"), _photo(0))
    args = argparse.Namespace(source=source, out=tmp_path / "out", val="p0", min_downscale=2.0, max_side=2048,
                              testset=tmp_path / "no-testset")  # fmt: skip
    with pytest.raises(SystemExit, match=r"enhancer dataset: the same photo would be in two splits .*dup.png \(train\) = p0.png \(val\)"):
        _dataset(args)


def test_export_records_the_training_and_validation_photos(source, tmp_path):
    data = tmp_path / "data"
    prepare_photos(source, data, validation=("p1",))
    record = data_record(data / "train")
    assert [i["name"] for i in record["images"]] == ["p0.png", "p2.png"] and record["count"] == 2
    assert data_record(data / "train")["fingerprint"] == record["fingerprint"] != data_record(data / "val")["fingerprint"]

    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"run_dir": str(run), "data_dir": str(data)}))
    (run / "data.json").write_text(json.dumps({"train_images": 2, "val_images": 1, "data_fingerprint": "f",
                                               "train": record, "val": data_record(data / "val")}))  # fmt: skip
    exported = _run_record(run)["data"]  # what `enhancer export` puts in metadata.json
    assert [i["name"] for i in exported["train"]["images"]] == ["p0.png", "p2.png"]
    assert [i["name"] for i in exported["val"]["images"]] == ["p1.png"]
    assert exported["train"]["fingerprint"] == record["fingerprint"]
