"""The operator table (`validate.OPERATORS`) is the one list of operators: the docs
and the SPEC's empty-value rule are read from it."""

from __future__ import annotations

import re
from pathlib import Path

from segengine.definition.validate import OPERATORS, POSITIVE_OPS
from segengine.fields import FieldType

REPO = Path(__file__).resolve().parents[2]


def test_docs_operator_table_is_the_operator_table():
    text = (REPO / "docs" / "segments.md").read_text(encoding="utf-8")
    table = text[text.index("| type | fields | operators |"):].split("\n\n")[0]
    documented = {}
    for types, ops in re.findall(r"^\| ([a-z, ]+) \| .+? \| (`.+`) \|$", table, flags=re.M):
        for name in types.split(", "):
            documented[FieldType(name)] = re.findall(r"`([a-z_]+)`", ops)
    assert documented == {ftype: list(ops) for ftype, ops in OPERATORS.items()}


def test_negative_operators_are_true_on_empty_and_name_their_positive():
    text = (REPO / "docs" / "segments.md").read_text(encoding="utf-8")
    paragraph = text[text.index("**Empty values.**"):text.index("**Dates are day-granular")]
    listed = set(re.findall(r"`([a-z_]+)`", paragraph.split("which are true on it")[0]))
    negatives = {op for ops in OPERATORS.values() for op, spec in ops.items() if spec.true_on_empty}
    assert negatives == listed
    for ftype, ops in OPERATORS.items():
        for op, spec in ops.items():
            assert spec.positive is None or spec.positive in POSITIVE_OPS[ftype], (ftype, op)
