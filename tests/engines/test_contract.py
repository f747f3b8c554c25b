"""The engine contract (engines/base.py): checked once, for every engine.

Every visitor handles every lowered node kind (a missing handler is an error when the
class is created), failures in a tree read the same whatever the engine, and the
planner asks `supports` rather than catching an exception.
"""

from __future__ import annotations

import pytest
from test_polars_engine import FIXTURE

from segengine.definition.lower import LOWERED_KINDS, Not
from segengine.definition.nodes import NODE_TYPES, FieldRule, Group, SegmentRef
from segengine.engines.base import HANDLED_KINDS, Visitor, handler_name
from segengine.engines.index import Evaluator
from segengine.engines.polars import Compiler
from segengine.engines.sql import SqlCompiler
from segengine.errors import EngineError

VISITORS = (SqlCompiler, Compiler, Evaluator)


@pytest.mark.parametrize("visitor", VISITORS, ids=lambda v: v.__name__)
def test_every_lowered_kind_has_a_handler(visitor):
    assert set(HANDLED_KINDS) == set(LOWERED_KINDS) - {Not}
    for kind in HANDLED_KINDS:
        assert visitor.NODE_HANDLERS[kind] == handler_name(kind)
        assert callable(getattr(visitor, handler_name(kind)))
    assert callable(visitor.negate)


def test_a_missing_handler_fails_when_the_class_is_created():
    with pytest.raises(TypeError, match=r"Partial has no handler for: .*visit_count_in \(CountIn\)"):

        class Partial(Visitor[int]):  # noqa: F841 - creating it is the test
            def negate(self, result):
                return result

            def visit_all_of(self, node):
                return 0


def test_a_missing_operator_fails_when_the_class_is_created():
    handlers = {handler_name(k): (lambda self, node: 0) for k in HANDLED_KINDS}
    with pytest.raises(TypeError, match=r"does not implement: .*ends_with \(text\)"):
        type("NoEndsWith", (Visitor,), {
            **handlers, "negate": lambda self, r: r,
            "COMPARE_OPS": {**SqlCompiler.COMPARE_OPS, "text": ("is",)},
        })


def test_resolved_node_kinds_never_reach_an_engine():
    """Engines handle the lowered kinds only; the language's own kinds are lowered first."""
    for visitor in VISITORS:
        assert not set(NODE_TYPES) & set(visitor.NODE_HANDLERS)


# --- one message per failure, whatever the engine -------------------------------------------


def test_unknown_nodes_and_references_fail_alike(fixture_engine):
    as_of = FIXTURE.as_of
    with pytest.raises(EngineError, match="no handler for str") as unknown:
        fixture_engine.contact_ids([Group("all", ("not a rule",))], as_of)
    assert "cannot evaluate a str node" in str(unknown.value)
    with pytest.raises(EngineError, match="segment reference 'other' was not resolved") as ref:
        fixture_engine.contact_ids([Group("all", (SegmentRef("other"),))], as_of)
    assert "inline_references" in str(ref.value)
    with pytest.raises(EngineError, match="unknown field 'nope'"):
        fixture_engine.contact_ids([Group("all", (FieldRule("nope", "is", "x"),))], as_of)
    with pytest.raises(EngineError, match="'contains' is not an operator for number field 'score'"):
        fixture_engine.contact_ids([Group("all", (FieldRule("score", "contains", "x"),))], as_of)
