"""`segengine overlap`: how several segments share their contacts.

Each segment is evaluated once, as a set of contacts; every number of the answer is
then an intersection (or a difference) of those sets and of the active contacts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..session import parse_as_of
from .sets import Members, evaluation

if TYPE_CHECKING:
    from ..session import SegmentArg, Session


def overlap(
    session: Session,
    segments: Sequence[SegmentArg],
    *,
    as_of: str | dt.date | None = None,
    engine: str = "auto",
) -> dict[str, Any]:
    """The overlap document: pairwise totals and sendable counts, exclusive counts, union.

    ``total[i][j]`` counts the contacts in both segment i and segment j (the diagonal:
    each segment's own total), ``sendable[i][j]`` the active ones among them;
    ``exclusive[i]`` the contacts of segment i in none of the others, whatever their status.
    """
    if len(segments) < 2:
        raise InputError(
            f"overlap needs at least two segments (got {len(segments)}): name two or more SEGs"
        )
    day = parse_as_of(as_of)
    snap = session.snapshot()
    loaded = [session.load_segment(s, snap) for s in segments]
    roots = [session.resolve(s, snap) for s in loaded]
    ev = evaluation(session, engine, snap)
    lowered = [ev.engine.lower([root], day) for root in roots]
    sets = [ev.members(tree, day) for tree in lowered]
    active = ev.active()
    sendable_sets = [s & active for s in sets]
    k = len(sets)
    total = [[0] * k for _ in range(k)]
    sendable = [[0] * k for _ in range(k)]
    for i in range(k):
        total[i][i] = len(sets[i])
        sendable[i][i] = len(sendable_sets[i])
        for j in range(i + 1, k):
            total[i][j] = total[j][i] = sets[i].common(sets[j])
            sendable[i][j] = sendable[j][i] = sendable_sets[i].common(sendable_sets[j])
    union = _union(sets)
    exclusive = [sets[i].without(_union(sets[:i] + sets[i + 1:])) for i in range(k)]
    return {
        "segments": [s.name for s in loaded],
        "as_of": day.isoformat(),
        "total": total,
        "sendable": sendable,
        "exclusive": exclusive,
        "union": {"total": len(union), "sendable": union.common(active)},
    }


def _union(sets: Sequence[Members]) -> Members:
    result = sets[0]
    for other in sets[1:]:
        result = result | other
    return result
