"""Sample types: integer samples map to the model's float32 [0, 1] exactly as the whole-image float
pipeline did, and back without loss where the type can hold the value."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from enhancer.samples import dtype_for_depth, from_unit_float, to_unit_float


@pytest.mark.parametrize(("dtype", "top"), [(np.uint8, 255.0), (np.uint16, 65535.0)])
def test_integer_samples_become_the_floats_a_whole_image_division_gave(dtype, top):
    every = np.arange(int(top) + 1, dtype=dtype)
    values = to_unit_float(every)
    assert values.dtype == np.float32
    np.testing.assert_array_equal(values, every.astype(np.float32) / top)  # bit for bit
    out = np.empty(every.shape, np.float32)
    assert to_unit_float(every, out=out) is out and np.array_equal(out, values)


def test_float_samples_pass_as_they_are():
    values = np.array([-0.5, 0.25, 1.5], np.float32)
    assert to_unit_float(values) is values  # no copy, and not clipped: blending clips later
    assert to_unit_float(values.astype(np.float64)).dtype == np.float32


def test_other_sample_types_are_refused():
    with pytest.raises(TypeError, match="uint8, uint16 or floating point"):
        to_unit_float(np.zeros(3, np.int32))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_round_trip_is_exact_and_out_of_range_values_clip(dtype):
    every = np.arange(np.iinfo(dtype).max + 1, dtype=dtype)
    np.testing.assert_array_equal(from_unit_float(to_unit_float(every), dtype), every)
    edges = from_unit_float(np.array([-0.3, 1.7, np.float32(0.5)], np.float32), dtype)
    assert edges.tolist() == [0, np.iinfo(dtype).max, np.iinfo(dtype).max // 2 + 1]  # half rounds up


def test_eight_bit_values_are_exact_in_sixteen_bits():
    """65535 = 255 x 257, so keeping model outputs as 16-bit samples loses nothing of an 8-bit answer."""
    every = np.arange(256, dtype=np.uint8)
    as16 = from_unit_float(to_unit_float(every), np.uint16)
    np.testing.assert_array_equal(as16, every.astype(np.uint16) * 257)
    np.testing.assert_array_equal(from_unit_float(to_unit_float(as16), np.uint8), every)


def test_conversion_in_slices_equals_one_pass(monkeypatch):
    rng = np.random.default_rng(3)
    values = rng.uniform(-0.2, 1.2, size=(37, 23, 3)).astype(np.float32)
    whole = from_unit_float(values, np.uint16)
    monkeypatch.setattr(sys.modules["enhancer.samples"], "_CHUNK_VALUES", 50)  # many slices, a ragged last one
    np.testing.assert_array_equal(from_unit_float(values, np.uint16), whole)
    np.testing.assert_array_equal(from_unit_float(values[:, ::-1], np.uint16), whole[:, ::-1])
    assert from_unit_float(np.float32(0.5), np.uint8) == 128  # a scalar is one value


def test_float_targets_are_converted_not_clipped():
    values = np.array([-0.5, 2.0], np.float64)
    np.testing.assert_array_equal(from_unit_float(values, np.float32), values.astype(np.float32))


def test_answer_depths_map_to_their_sample_types():
    assert dtype_for_depth(8) == np.uint8 and dtype_for_depth(16) == np.uint16
