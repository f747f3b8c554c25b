"""Segment analytics: how segments overlap, how a segment grew, why a contact is in it.

Operations on the session, next to export and send (docs/analytics.md). Each answers
with a plain JSON-ready dict, the document its command prints with ``--json``.
"""

from .overlap import overlap
from .trend import EVERY, MAX_POINTS, add_months, trend, trend_points
from .why import UnknownEmail, why

__all__ = ["EVERY", "MAX_POINTS", "UnknownEmail", "add_months", "overlap", "trend", "trend_points", "why"]
