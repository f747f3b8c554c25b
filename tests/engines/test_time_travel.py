"""Every engine reads a tree over the data as it stood at the end of a day (trend points).

The lowering's `as_it_stood` cuts every event window at the day and keeps the contacts
added by then; the reference evaluator filters the data itself instead, so a wrong cut
(an open window left open, a `when` window past the day, `last N` campaigns) differs.
"""

from __future__ import annotations

import datetime as dt
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference_as_it_stood, reference_by_status
from strategies import DAYS, rule_trees, workspaces, write_workspace

from engines.engine_matrix import build
from segengine.definition.lower import AllOf, Constant, CountIn, DayRange, Events, HasEvents, Not
from segengine.definition.lower import as_it_stood as cut
from segengine.fields import FieldType

EXAMPLES = int(os.environ.get("SEGENGINE_ENGINE_EXAMPLES", "5"))
#: the pooled days, the day before each (the edges of windows), and days long before
POINTS = tuple(sorted({d + dt.timedelta(days=k) for d in DAYS for k in (-1, 0)}))


def test_the_cut_of_each_kind():
    day = dt.date(2026, 3, 15)
    opened = Events("open", "any", None, None)
    window = Events("open", "any", (dt.date(2026, 3, 1), dt.date(2026, 4, 1)), None)
    later = Events("open", "any", (dt.date(2026, 3, 16), None), None)
    added = DayRange("date_added", FieldType.DATETIME, None, day)

    def inner(node):
        lowered = cut(node, day)
        assert isinstance(lowered, AllOf) and lowered.rules[0] == added
        return lowered.rules[1]

    assert inner(HasEvents(opened)) == HasEvents(Events("open", "any", (None, day), None))
    assert inner(CountIn(window, 2, 5)).events.days == (dt.date(2026, 3, 1), day)
    assert inner(HasEvents(later)) == Constant(False)
    assert inner(CountIn(later, 0, 3)) == Constant(True)  # no event: zero is in [0, 3]
    assert inner(Not(CountIn(later, 1, 3))) == Not(Constant(False))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(ws=workspaces(), data=st.data())
def test_random_trees_as_they_stood_match_the_reference(request, engine_name, tmp_path_factory, ws, data):
    roots = data.draw(st.lists(rule_trees(ws.schema, ws.campaigns), min_size=1, max_size=3))
    days = data.draw(st.lists(st.sampled_from(POINTS), min_size=1, max_size=4, unique=True))
    directory = tmp_path_factory.mktemp(engine_name)
    engine = build(engine_name, write_workspace(ws, directory), directory, request)
    contacts, events = list(ws.contacts), list(ws.events)
    try:
        for day in days:
            expected_each = [reference_as_it_stood(contacts, events, ws.schema, r, day) for r in roots]
            for root, expected in zip(roots, expected_each, strict=True):
                got = engine.contact_ids([root], day, as_it_was=True).tolist()
                assert set(got) == expected, (day, root)
            union = set().union(*expected_each)
            assert engine.count(roots, day, as_it_was=True) == reference_by_status(contacts, union)
    finally:
        engine.close()


@settings(max_examples=EXAMPLES * 4, deadline=None, suppress_health_check=list(HealthCheck))
@given(ws=workspaces(), data=st.data())
def test_trend_points_sharing_work_on_the_index_match_the_reference(request, tmp_path_factory, ws, data):
    """A trend's points on the index reuse each other's work (sliding windows, campaign
    answers, contacts added so far); every point must still be the reference's."""
    from segengine.analytics.sets import Evaluation
    from segengine.definition.nodes import (
        ActivityRule,
        CountCondition,
        Group,
        LastCampaigns,
        Window,
    )

    sliding = st.builds(
        ActivityRule, st.sampled_from(("opened", "clicked", "sent")),
        st.sampled_from(("any", LastCampaigns(1), LastCampaigns(3), tuple(sorted(ws.campaigns[:2])))),
        # window edges on the pooled days, where consecutive points move them across events
        st.sampled_from((None, Window("in_last_days", 40), Window("in_last_days", 7),
                         Window("in_last_days", 8), Window("in_last_days", 30), Window("in_last_days", 31),
                         Window("older_than_days", 2), Window("after", DAYS[3]))),
        # thresholds a point's move can cross either way (one event entering or leaving)
        st.sampled_from((CountCondition("gte", 1), CountCondition("gte", 2), CountCondition("gte", 3),
                         CountCondition("lte", 1), CountCondition("eq", 0), CountCondition("between", (1, 2)),
                         CountCondition("between", (2, 3)))),
    )
    roots = [Group("all", (r,)) for r in data.draw(st.lists(sliding, min_size=1, max_size=2))]
    roots += data.draw(st.lists(rule_trees(ws.schema, ws.campaigns), max_size=1))
    # a daily run ending on or after a pooled day (so windows move across events), then
    # a few later points further apart
    end = data.draw(st.sampled_from(POINTS)) + dt.timedelta(days=data.draw(st.integers(0, 9)))
    run = [end - dt.timedelta(days=k) for k in range(data.draw(st.integers(2, 10)))]
    after = [p for p in POINTS if p > end]
    later = data.draw(st.lists(st.sampled_from(after), max_size=3, unique=True)) if after else []
    days = sorted(run) + sorted(later)
    directory = tmp_path_factory.mktemp("trend")
    engine = build(data.draw(st.sampled_from(("index", "auto"))), write_workspace(ws, directory), directory, request)
    contacts, events = list(ws.contacts), list(ws.events)
    active = {c["contact_id"] for c in contacts if c["status"] == "active"}
    try:
        evaluation = Evaluation(engine, None, None)
        # the trend's own points: moved from the last point where they can be (only the
        # rows added or with events in between tested again), in full otherwise
        points = Evaluation(engine, None, None)
        previous = None
        for day in days:
            lowered = engine.lower(roots, day, as_it_was=True)
            got = evaluation.as_it_stood(lowered, day)
            expected = set().union(*(reference_as_it_stood(contacts, events, ws.schema, r, day) for r in roots))
            ids = engine.index.ids
            assert len(got) == len(expected), (day, roots)
            rows = {int(ids[r]) for r in range(engine.index.n) if got.common(single(r, engine.index.n))}
            assert rows == expected, (day, roots)
            assert points.point(lowered, day) == {
                "total": len(expected), "sendable": len(expected & active),
                "joined": None if previous is None else len(expected - previous),
                "left": None if previous is None else len(previous - expected),
            }, (day, roots)
            previous = expected
    finally:
        engine.close()


def single(row: int, n: int):
    from pyroaring import BitMap

    from segengine.analytics.sets import Members

    return Members(n, bitmap=BitMap([row]))


@settings(max_examples=EXAMPLES * 4, deadline=None, suppress_health_check=list(HealthCheck))
@given(ws=workspaces(), data=st.data())
def test_moved_counts_match_counts_computed_afresh(request, tmp_path_factory, ws, data):
    """A window's counts moved day by day (and from one campaign list to another) are
    each row's count of the window's events, repeats on a day or a campaign included."""
    import numpy as np

    from segengine.analytics.sliding import PointEvaluator, TrendMemory

    etype = data.draw(st.sampled_from(("open", "click", "sent")))
    length = data.draw(st.sampled_from((None, 0, 6, 30, 40)))
    lists = st.none() | st.lists(st.integers(0, 7), min_size=1, max_size=3, unique=True).map(sorted)
    start = data.draw(st.sampled_from(POINTS)) - dt.timedelta(days=data.draw(st.integers(0, 40)))
    steps = data.draw(st.lists(st.integers(1, 35), min_size=1, max_size=6))
    directory = tmp_path_factory.mktemp("moved")
    engine = build("index", write_workspace(ws, directory), directory, request)
    try:
        memory = TrendMemory()
        day = start
        chosen = data.draw(lists)
        for step in [0, *steps]:
            day += dt.timedelta(days=step)
            if length is None or data.draw(st.booleans()):
                chosen = data.draw(lists)  # "the last N" changing its campaigns
            base = engine.evaluator(day)
            evaluator = PointEvaluator(base.index, base.tables, day, base.fallback, memory=memory)
            codes = None if chosen is None else np.array(
                [c for c in chosen if c < len(base.index.campaigns)], dtype=np.int64)
            high = (day - dt.date(1970, 1, 1)).days
            low = None if length is None else high - length
            moves = []
            moved = evaluator.moved_counts(etype, low, high, codes, moves)
            got = evaluator.window_counts(etype, low, high, codes) if moved is None else moved
            rows = evaluator.matching_rows(etype, codes, (low, high), None)
            assert got.tolist() == np.bincount(rows, minlength=base.index.n).tolist(), (day, chosen)
            for move in moves:  # each change is the count before and after, once per row
                assert len(set(move.rows.tolist())) == len(move.rows)
    finally:
        engine.close()
