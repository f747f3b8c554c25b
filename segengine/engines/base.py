"""What every engine implements, and the data it evaluates.

An engine evaluates *resolved* rule trees (segment references already inlined by
`segengine.definition.rewrite`) over two tables laid out as SPEC section 9 says:

``contacts``: ``contact_id`` (int64), ``email``, ``status`` (lower-case text),
``date_added`` (timestamp, UTC, no time zone), ``lists`` (list of text, ``[]`` when
in no list), then the custom fields (text -> string, number -> double, date -> date,
datetime -> timestamp UTC without zone, boolean -> bool). ``email_domain`` is derived.

``events``: ``contact_id`` (int64), ``campaign`` (text), ``type`` (sent, open,
click, bounce, unsubscribe), ``timestamp`` (UTC, no zone), ``url`` (text or null);
one row per distinct event.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from ..definition.nodes import Group
from ..fields import STATUSES
from ..store.manifest import Tables


class Engine(ABC):
    """Evaluates segments; every engine must give exactly the same answers."""

    name: str = "?"

    def __init__(self, tables: Tables):
        self.tables = tables

    @abstractmethod
    def contact_ids(self, roots: Sequence[Group], as_of: dt.date) -> np.ndarray:
        """The sorted, distinct ``contact_id`` values (int64) matching any of `roots`."""

    @abstractmethod
    def count(self, roots: Sequence[Group], as_of: dt.date) -> dict[str, int]:
        """Contacts matching any of `roots`, by status (all three keys, zeros included)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or caches."""


def empty_by_status() -> dict[str, int]:
    return {s: 0 for s in STATUSES}
