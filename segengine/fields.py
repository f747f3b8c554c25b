"""Field types and the schema of a workspace's contacts.

Built-in fields exist in every workspace; custom fields are created by imports and
keep their type for ever (docs/architecture.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum


class FieldType(StrEnum):
    TEXT = "text"
    NUMBER = "number"
    DATE = "date"
    DATETIME = "datetime"
    BOOLEAN = "boolean"
    ENUM = "enum"  # status only
    SET = "set"  # lists only


#: Types a custom field may have (enum and set are reserved for built-ins).
CUSTOM_TYPES = (
    FieldType.TEXT,
    FieldType.NUMBER,
    FieldType.DATE,
    FieldType.DATETIME,
    FieldType.BOOLEAN,
)

STATUSES = ("active", "unsubscribed", "bounced")

#: Built-in fields in the order they are shown.
BUILTIN_FIELDS: dict[str, FieldType] = {
    "email": FieldType.TEXT,
    "email_domain": FieldType.TEXT,
    "status": FieldType.ENUM,
    "date_added": FieldType.DATETIME,
    "lists": FieldType.SET,
}

#: `email_domain` is the part of `email` after its *last* ``@`` (empty without one).
#: Imports accept exactly one ``@``, so for imported data it is also the part after
#: the first; data never imported (Spark over a lakehouse folder, Parquet written by
#: hand) may hold a quoted local part with an ``@`` (``"a@b"@c.io``: ``c.io``). Every
#: engine derives it by this rule: this pattern (Polars, Arrow) or the SQL of
#: `segengine.engines.sql.email_domain`.
EMAIL_DOMAIN_PATTERN = r"@(?P<domain>[^@]*)$"


def email_domain(email: str | None) -> str | None:
    """`email`'s domain by the one rule (None without an ``@``)."""
    if email is None or "@" not in email:
        return None
    return email.rpartition("@")[2]


#: Names no custom field may take: the built-ins and the internal key.
RESERVED_NAMES = frozenset(BUILTIN_FIELDS) | {"contact_id"}

FIELD_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

#: Event types as stored, and the activity names of segment rules that count them.
EVENT_TYPES = ("sent", "open", "click", "bounce", "unsubscribe")
ACTIVITY_EVENT_TYPE: dict[str, str] = {
    "sent": "sent",
    "opened": "open",
    "clicked": "click",
    "bounced": "bounce",
    "unsubscribed": "unsubscribe",
}


@dataclass(frozen=True, slots=True)
class Schema(Mapping[str, FieldType]):
    """The fields of a workspace: built-ins, then custom fields in creation order."""

    custom: tuple[tuple[str, FieldType], ...] = ()

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str | FieldType]]) -> Schema:
        return cls(tuple((name, FieldType(t)) for name, t in pairs))

    @property
    def custom_fields(self) -> list[str]:
        return [name for name, _ in self.custom]

    def type_of(self, name: str) -> FieldType:
        return self[name]

    def with_field(self, name: str, ftype: FieldType) -> Schema:
        return Schema(self.custom + ((name, FieldType(ftype)),))

    def __getitem__(self, name: str) -> FieldType:
        if name in BUILTIN_FIELDS:
            return BUILTIN_FIELDS[name]
        for field, ftype in self.custom:
            if field == name:
                return ftype
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        yield from BUILTIN_FIELDS
        for name, _ in self.custom:
            yield name

    def __len__(self) -> int:
        return len(BUILTIN_FIELDS) + len(self.custom)
