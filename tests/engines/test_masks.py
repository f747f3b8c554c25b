"""Masks to bitmaps and back through Roaring's serialized form, against row by row."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroaring import BitMap

from segengine.engines.masks import CHUNK, bitmap_to_mask, mask_to_bitmap

#: sizes around the 65,536-row chunks and the 4,096-row switch between values and bitsets
SIZES = [0, 1, 4095, 4097, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17]


@st.composite
def masks(draw) -> np.ndarray:
    n = draw(st.sampled_from(SIZES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    density = draw(st.sampled_from([0.0, 0.001, 4096 / CHUNK, 4097 / CHUNK, 0.5, 1.0]))
    mask = rng.random(n) < density
    for _ in range(draw(st.integers(0, 3))):  # long runs, as "not bounced" has
        if n:
            low, high = sorted(rng.integers(0, n + 1, 2).tolist())
            mask[low:high] = draw(st.booleans())
    return mask


@settings(max_examples=300, deadline=None)
@given(mask=masks(), optimize=st.booleans(), flip=st.booleans())
def test_masks_and_bitmaps_convert_exactly(mask, optimize, flip):
    n = len(mask)
    assert mask_to_bitmap(mask) == BitMap(np.flatnonzero(mask).tolist())
    bitmap = BitMap(np.flatnonzero(mask).tolist())
    if flip:
        bitmap = bitmap.flip(0, n)
    if optimize:  # run containers in the serialized form
        bitmap.run_optimize()
    want = np.zeros(n, dtype=bool)
    want[np.array(bitmap.to_array(), dtype=np.int64)] = True
    got = bitmap_to_mask(bitmap, n)
    assert got.dtype == bool and len(got) == n
    assert np.array_equal(got, want)


def test_a_bitmap_with_many_run_containers_converts():
    n = 10 * CHUNK
    bitmap = BitMap()
    for start in range(0, n, 3 * CHUNK // 2):  # runs crossing chunk bounds
        bitmap.add_range(start, start + CHUNK // 3)
    bitmap.run_optimize()
    want = np.zeros(n, dtype=bool)
    want[np.array(bitmap.to_array(), dtype=np.int64)] = True
    assert np.array_equal(bitmap_to_mask(bitmap, n), want)
    assert mask_to_bitmap(want) == bitmap


def test_bytes_that_are_no_bitmap_are_refused():
    class Fake(BitMap):
        def serialize(self) -> bytes:
            return b"\x00" * 16

    with pytest.raises(ValueError, match="cookie"):
        bitmap_to_mask(Fake(), 10)
