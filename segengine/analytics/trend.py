"""`segengine trend`: the size of a segment (or a union) over time.

At each point D the segments are evaluated with ``as_of = D`` over the data as it stood
at the end of day D: contacts added on or before D, events on or before D (the
lowering's `as_it_stood`, so every engine answers a point alike). Field values and
statuses are the current ones: the workspace keeps no history of them.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .sets import evaluation

if TYPE_CHECKING:
    from ..session import SegmentArg, Session

EVERY = ("day", "week", "month")
#: More points than this is a mistake more often than a wish (ten years of days is 3,650
#: evaluations); a longer span takes a longer step.
MAX_POINTS = 1000


def parse_day(value: str | dt.date | None, option: str) -> dt.date:
    """A required YYYY-MM-DD option as a date; the error names the option."""
    if value is None or value == "":
        raise InputError(f"{option}: a date is required: use YYYY-MM-DD")
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise InputError(f"{option}: {value!r} is not a date: use YYYY-MM-DD") from None


def add_months(day: dt.date, months: int) -> dt.date:
    """`day` moved by `months`, keeping its day of the month or the month's last day."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return dt.date(year, month + 1, min(day.day, last))


def trend_points(start: dt.date, end: dt.date, every: str) -> list[dt.date]:
    """The points from `start` to `end` (inclusive) one step apart.

    A month step counts from `start` (Jan 31, Feb 28 or 29, Mar 31, ...), never from the
    previous point, so a short month does not pull every later point back.
    """
    if every not in EVERY:
        raise InputError(f"--every: {every!r} is not a step: use day, week or month")
    if start > end:
        raise InputError(
            f"--from: {start.isoformat()} is after --to {end.isoformat()}: give --from on or before --to"
        )
    days: list[dt.date] = []
    step = 0
    while True:
        if every == "month":
            try:
                day = add_months(start, step)
            except ValueError:  # past the last year of the calendar
                break
        else:
            try:
                day = start + dt.timedelta(days=step * (7 if every == "week" else 1))
            except OverflowError:
                break
        if day > end:
            break
        days.append(day)
        if len(days) > MAX_POINTS:
            raise InputError(
                f"--from/--to: more than {MAX_POINTS} points by {every}: "
                "take a longer --every or a shorter span"
            )
        step += 1
    return days


def trend(
    session: Session,
    segments: Sequence[SegmentArg],
    *,
    start: str | dt.date | None,
    end: str | dt.date | None,
    every: str = "day",
    engine: str = "auto",
) -> dict[str, Any]:
    """The trend document: per point the union's total, sendable, joined and left."""
    first, last = parse_day(start, "--from"), parse_day(end, "--to")
    days = trend_points(first, last, every)
    snap = session.snapshot()
    if not segments:
        raise InputError("name at least one segment")
    loaded = [session.load_segment(s, snap) for s in segments]
    roots = [session.resolve(s, snap) for s in loaded]
    ev = evaluation(session, engine, snap)
    points = [
        {"as_of": day.isoformat(), **ev.point(ev.engine.lower(roots, day, as_it_was=True), day)}
        for day in days
    ]
    return {
        "segments": [s.name for s in loaded],
        "from": first.isoformat(),
        "to": last.isoformat(),
        "every": every,
        "points": points,
    }
