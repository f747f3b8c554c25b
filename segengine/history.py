"""One contact's audit trail: its fields, its status changes and its events, in time order.

Status changes come from the status log (`segengine.store.status`), which records
every change made by ``unsubscribe``, ``resubscribe`` and hard bounces during a send,
with the command and the reason. A status set by a contact import is not logged
there; it shows as the current status only. Events are the contact's engagement
history (sent, open, click, bounce, unsubscribe), bulk unsubscribes included.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb
from sqlglot import exp

from . import addresses
from .engines.sql import email_domain
from .errors import InputError
from .store.duck import file_list, q
from .store.status import status_log_files

if TYPE_CHECKING:
    from .session import Session


class UnknownContact(InputError):
    """No contact has the given email address."""


def iso_datetime(value: dt.datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ``, with the fraction of a second only when there is one.

    The same rendering as a CSV export's datetime cells.
    """
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def json_value(value: Any) -> Any:
    """A stored value as JSON: ISO dates, whole numbers as integers, lists as lists."""
    if isinstance(value, dt.datetime):
        return iso_datetime(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class ContactHistory:
    email: str
    contact_id: int
    #: every field (built-ins, then custom fields in creation order), as stored
    fields: dict[str, Any]
    #: status-log rows, oldest first: timestamp, from_status, to_status, command, reason
    status_changes: tuple[dict[str, Any], ...]
    #: events, oldest first: timestamp, type, campaign, url
    events: tuple[dict[str, Any], ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON values: datetimes as ``YYYY-MM-DDTHH:MM:SSZ``, whole numbers as integers."""
        return {
            "email": self.email,
            "contact_id": self.contact_id,
            "fields": _json_row(self.fields),
            "status_changes": [_json_row(c) for c in self.status_changes],
            "events": [_json_row(e) for e in self.events],
        }

    def timeline(self) -> list[dict[str, Any]]:
        """Status changes and events in one list, in time order (a change before its event).

        Sorted on the stored timestamps: their ISO texts do not sort right when only
        some have a fraction of a second.
        """
        merged = [{"kind": "status", **c} for c in self.status_changes]
        merged += [{"kind": "event", **e} for e in self.events]
        merged.sort(key=lambda row: (row["timestamp"], row["kind"] != "status"))
        return [_json_row(row) for row in merged]


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    return {name: json_value(value) for name, value in row.items()}


def normalise_email(email: str) -> str:
    """By the address rule imports apply (segengine.addresses)."""
    return addresses.normalise(email)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    result = con.execute(sql, params)
    names = [d[0] for d in result.description]
    return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def contact_history(session: Session, email: str) -> ContactHistory:
    """The audit trail of the contact with address `email` (normalised as on import)."""
    wanted = normalise_email(email)
    snap = session.snapshot()
    con = session.connection(snap)
    schema = snap.schema
    columns = ", ".join(
        f"{email_domain(exp.column('email')).sql('duckdb')} AS email_domain"
        if name == "email_domain"
        else q(name) for name in schema
    )
    found = _rows(con, f"SELECT contact_id, {columns} FROM contacts WHERE email = ?", [wanted])
    if not found:
        # an address stored by an older rule (a full-width letter): the rule applied to
        # the stored side finds it
        addresses.register(con)
        found = _rows(
            con,
            f"SELECT contact_id, {columns} FROM contacts "
            f"WHERE {addresses.sql_email('email')} = ? ORDER BY contact_id LIMIT 1",
            [wanted],
        )
    if not found:
        raise UnknownContact(
            f"no contact has the email {wanted!r}: check the address "
            "(addresses are matched as imports store them: trimmed, NFKC, lower-cased)"
        )
    fields = found[0]
    contact_id = int(fields.pop("contact_id"))
    events = _rows(
        con,
        "SELECT timestamp, type, campaign, url FROM events WHERE contact_id = ? "
        "ORDER BY timestamp, type, campaign, url",
        [contact_id],
    )
    changes: list[dict[str, Any]] = []
    logs = status_log_files(snap)
    if logs:
        changes = _rows(
            con,
            "SELECT timestamp, from_status, to_status, command, reason "
            f"FROM read_parquet({file_list(logs)}) WHERE contact_id = ? ORDER BY timestamp",
            [contact_id],
        )
    return ContactHistory(wanted, contact_id, fields, tuple(changes), tuple(events))
