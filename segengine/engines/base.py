"""What every engine implements, and the data it evaluates.

An engine evaluates *resolved* rule trees (segment references already inlined by
`segengine.definition.rewrite`), which `Engine.contact_ids` and `Engine.count` lower
(`segengine.definition.lower`) before the engine's own code sees them; that code is
a `Visitor` of the lowered node kinds. The data is two tables laid out as docs/sql.md
says:

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
import re
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from ..definition.lower import COMPARE_OPS, LOWERED_KINDS, Lowered, Not, as_it_stood, lower_all
from ..definition.nodes import Group
from ..errors import EngineError
from ..fields import STATUSES, FieldType
from ..lazy import numpy_on_first_use
from ..store.manifest import Tables

if TYPE_CHECKING:
    import numpy as np
else:
    np = numpy_on_first_use(globals())


class Engine(ABC):
    """Evaluates segments; every engine must give exactly the same answers.

    The public methods take resolved trees and lower them; an engine implements the
    `evaluate_*` methods, which only ever see lowered trees.
    """

    name: str = "?"

    def __init__(self, tables: Tables):
        self.tables = tables

    def lower(
        self, roots: Sequence[Group], as_of: dt.date, *, as_it_was: bool = False
    ) -> tuple[Lowered, ...]:
        """The lowered trees; `as_it_was`: over the data as it stood at the end of `as_of`
        (contacts added and events on or before it: `lower.as_it_stood`)."""
        lowered = lower_all(roots, self.tables.schema, as_of)
        if as_it_was:
            added = self.tables.schema["date_added"]
            lowered = tuple(as_it_stood(node, as_of, added) for node in lowered)
        return lowered

    def contact_ids(
        self, roots: Sequence[Group], as_of: dt.date, *, as_it_was: bool = False
    ) -> np.ndarray:
        """The sorted, distinct ``contact_id`` values (int64) matching any of `roots`."""
        return self.evaluate_ids(self.lower(roots, as_of, as_it_was=as_it_was), as_of)

    def count(
        self, roots: Sequence[Group], as_of: dt.date, *, as_it_was: bool = False
    ) -> dict[str, int]:
        """Contacts matching any of `roots`, by status (all three keys, zeros included)."""
        return self.evaluate_count(self.lower(roots, as_of, as_it_was=as_it_was), as_of)

    @abstractmethod
    def evaluate_ids(self, roots: Sequence[Lowered], as_of: dt.date) -> np.ndarray:
        """`contact_ids` of lowered trees."""

    @abstractmethod
    def evaluate_count(self, roots: Sequence[Lowered], as_of: dt.date) -> dict[str, int]:
        """`count` of lowered trees."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or caches."""

    def take_over(self, previous: Engine) -> None:  # noqa: B027 - optional hook
        """Keep what `previous` (this engine's predecessor over the data a write replaced)
        read or derived that still holds for this engine's data."""


def empty_by_status() -> dict[str, int]:
    return {s: 0 for s in STATUSES}


# --- the visitor contract ---------------------------------------------------------------

R = TypeVar("R")


def handler_name(kind: type) -> str:
    """``visit_has_events`` for `HasEvents`: the method that evaluates a node kind."""
    return "visit_" + re.sub(r"(?<!^)(?=[A-Z])", "_", kind.__name__).lower()


#: The kinds an engine's visitor handles itself (`Not` is the base class's).
HANDLED_KINDS: tuple[type, ...] = tuple(k for k in LOWERED_KINDS if k is not Not)


class Visitor(Generic[R]):
    """Evaluates lowered trees to an engine's result type `R` (a predicate, rows, ...).

    A subclass defines one ``visit_<kind>`` per lowered node kind and `negate`; a
    missing one is a `TypeError` naming it when the class is created (at import), not
    a wrong answer later. `Not` is applied here, once, through `negate`.

    `COMPARE_OPS`, when a subclass sets it, lists per field type the positive
    operators its `visit_compare` implements; it must cover those the lowering makes
    `Compare` nodes of (`lower.COMPARE_OPS`, from the operator table), so a new operator without an implementation is also
    caught at class creation. `supports` says whether the engine can evaluate a node at
    all (the `auto` planner asks it before sending a rule elsewhere).
    """

    engine_name: ClassVar[str] = "?"
    COMPARE_OPS: ClassVar[Mapping[FieldType, Collection[str]] | None] = None
    #: node kind -> the name of its handler method
    NODE_HANDLERS: ClassVar[dict[type, str]] = {k: handler_name(k) for k in HANDLED_KINDS}

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        missing = [
            f"{handler_name(k)} ({k.__name__})"
            for k in HANDLED_KINDS
            if not callable(getattr(cls, handler_name(k), None))
        ]
        if not callable(getattr(cls, "negate", None)):
            missing.append("negate (Not)")
        if missing:
            raise TypeError(f"{cls.__name__} has no handler for: {', '.join(missing)}")
        if cls.COMPARE_OPS is not None:
            lacking = [
                f"{op} ({ftype})"
                for ftype, ops in COMPARE_OPS.items()
                for op in sorted(ops)
                if op not in cls.COMPARE_OPS.get(ftype, ())
            ]
            if lacking:
                raise TypeError(f"{cls.__name__} does not implement: {', '.join(lacking)}")

    def visit(self, node: Lowered) -> R:
        """The result of `node`."""
        if type(node) is Not:
            return self.negate(self.visit(node.rule))  # type: ignore[attr-defined]
        handler = self.NODE_HANDLERS.get(type(node))
        if handler is None:
            raise EngineError(f"the {self.engine_name} engine has no handler for {type(node).__name__}")
        return getattr(self, handler)(node)

    def supports(self, node: Lowered) -> bool:
        """Whether this engine can evaluate `node` (groups: their own combining only)."""
        return True
