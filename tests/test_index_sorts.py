"""The index build's fast paths (radix grouping, time-ordered days) give what the
general sort gives, whatever order the events come in."""

from __future__ import annotations

import numpy as np
import pytest

from segengine.store.index.bitmaps import _group_packed, day_order, group_bitmaps
from segengine.store.index.events import by_row_latest_first

CASES = [
    # (days in order, key span, rows) - small and wide spans, rows above 2**16
    (True, 300, 5_000), (False, 300, 5_000), (False, 70_000, 5_000),
    (True, 40, 200_000), (False, 3, 3_000_000), (True, 1, 10),
]


@pytest.mark.parametrize(("ordered", "span", "contacts"), CASES)
def test_grouping_matches_the_packed_sort(ordered, span, contacts):
    rng = np.random.default_rng(span + contacts)
    keys = rng.integers(-5, span, 20_000).astype(np.int32)
    if ordered:
        keys = np.sort(keys)
    rows = rng.integers(0, contacts, len(keys)).astype(np.uint32)
    expected = _group_packed(keys, rows)
    for given_rows in (rows, np.sort(rows)):
        got = group_bitmaps(keys, given_rows)
        want = expected if given_rows is rows else _group_packed(keys, given_rows)
        assert got.keys() == want.keys()
        assert all(got[k] == want[k] for k in want)


@pytest.mark.parametrize(("ordered", "span", "contacts"), CASES)
def test_rows_latest_first_match_the_packed_sort(ordered, span, contacts):
    rng = np.random.default_rng(span * 7 + contacts)
    days = rng.integers(19_000, 19_000 + span, 20_000).astype(np.int32)
    if ordered:
        days = np.sort(days)
    rows = rng.integers(0, contacts, len(days)).astype(np.uint32)
    sorted_rows, sorted_days = by_row_latest_first(rows, days)
    key = np.lexsort((-days.astype(np.int64), rows))
    assert np.array_equal(sorted_rows, rows[key].astype(np.int64))
    assert np.array_equal(sorted_days, days[key])
    order = day_order(days)
    assert np.array_equal(days[order], np.sort(days))
    assert np.array_equal(order, np.argsort(days, kind="stable"))


def test_top_merged_is_the_top_of_the_sorted_union():
    from segengine.store.index.events import top_merged

    rng = np.random.default_rng(5)
    for size in (1, 2, 3, 5):
        a = -np.sort(-rng.integers(-3, 4, (size, 2_000)), axis=0)
        b = -np.sort(-rng.integers(-3, 4, (size, 2_000)), axis=0)
        want = -np.sort(-np.concatenate((a, b)), axis=0)[:size]
        assert np.array_equal(top_merged(a, b), want)
