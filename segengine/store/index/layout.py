"""The engagement index's layout: its format version, its files and its bitmap names.

The index answers segment rules in milliseconds where a scan of the raw events takes
seconds. It is a directory under ``index/`` that one manifest references::

    manifest["index"] = {"path": "index/index-v000007-...", "format": 4,
                         "covers": {"contacts": [...], "events": [...]}}

It is never stale: it is built inside the transaction that changes the data it covers
(`build.refresh_index`, called by `Transaction.commit` before the new files are made
durable), and readers refuse it unless its ``covers`` equal the snapshot's files exactly
(`read.load_index`). docs/index.md explains the layout and the alternatives we rejected.

Rows: contact *rows* are positions in the contacts sorted by ``contact_id`` (for a
workspace, ``row = contact_id - 1``). Bitmaps and arrays are indexed by row. Contact ids
are only ever appended, so rows of an older index stay valid when contacts are added;
anything else (a contact removed, an id inserted) rebuilds the event part from scratch.

Directory layout (every file immutable; files an update does not change are
hard-linked from the previous index directory, so an update writes only what changed)::

    meta.json                  covers, sizes, dictionaries (campaigns, send times), files
    contacts/ids.npy           int64 contact ids, sorted (row -> contact_id)
    contacts/status.npy        uint8 status codes (STATUSES order)
    contacts/f.<i>.*           one field: codes + lower-cased dictionary, values, days, ...
    contacts/bitmaps-*.bin     status bitmaps, one bitmap per lower-cased list name
    aggregates/*.npy           count, first day, last day per (event type, row); the days
                               of the RECENT latest events per (event type, row): a base
                               and a delta of the rows changed since (aggregates.py)
    bitmaps-*.bin              roaring bitmaps per (type), (type, campaign), (type, day),
                               (click URL), (type, k, day): named by `BitmapKeys`
    urls-*.arrow               lower-cased click URL dictionary
    events/<block>.*.bin       the event store, blocks of up to BLOCK_ROWS events of
                               one import: per type the rows (uint32), days (int32),
                               campaigns (int32), urls (int32), sorted by day so that a
                               window is a slice found by binary search
"""

from __future__ import annotations

import datetime as dt

from ...errors import EngineError
from ...fields import EVENT_TYPES

#: 2: event-store blocks sorted by day per type, per-URL click bitmaps.
#: 3: aggregates/recent.npy (format 2 was committed for a while without it).
#: 4: aggregates as a base and a delta (`aggregates.py`); a format-3 index reads as a
#: base without a delta, so both are read and extended (older code refuses format 4).
FORMAT = 4
READABLE_FORMATS = (3, 4)
#: The contact part's layout within FORMAT; an older contact part is rebuilt at the next
#: commit rather than carried over (2: per-value bitmaps of text fields; 3: the
#: dictionary of a text field with value bitmaps also as JSON, ``words``; 4: the email
#: field's rows sorted by a hash of the address, ``hash`` and ``hash_rows``, lookup.py).
CONTACTS_VERSION = 4
#: The field whose values are found by hash (`why` finds a contact by its address).
LOOKUP_FIELD = "email"
META = "meta.json"
#: meta.json's list of event-store blocks (the on-disk name since format 2)
BLOCK_FILES = "segments"
#: Keys of a field's meta.json entry that are not array files.
NOT_FILES = frozenset({"type", "lower", "words", "value_bitmaps", "bitmap_days"})
#: Dictionaries (a text field's values, the click URLs) of at most this many entries are
#: also stored as JSON, so a rule on them is tested without loading PyArrow: a one-shot
#: count then starts in a fraction of the time.
WORDS_MAX = 4096
DAY_US = 86_400_000_000
EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
TYPE_CODES = {t: i for i, t in enumerate(EVENT_TYPES)}
CLICK = TYPE_CODES["click"]
SENT = TYPE_CODES["sent"]
#: The event store's columns per type and their dtypes (``url`` for clicks only).
#: (numpy dtypes by name: a count answered by bitmaps does not import numpy)
STORE_COLUMNS = {"rows": "uint32", "day": "int32", "campaign": "int32", "url": "int32"}


class IndexUnavailable(EngineError):
    """The snapshot has no engagement index covering exactly its files."""


def day_number(day: dt.date) -> int:
    """Days since 1970-01-01 (the index's day unit)."""
    return day.toordinal() - EPOCH_ORDINAL


class BitmapKeys:
    """The names of the index's bitmaps: the one definition its writer and reader use.

    A name is stored in ``meta.json`` (bitmap name -> layer file, offset, size), so the
    spelling below is part of the format: changing one means a new `FORMAT`.
    Contact bitmaps (``contacts/``) are named by `status`, `list_name`, `in_a_list`
    and `field_value`; event bitmaps (the index directory) by the others.
    """

    IN_A_LIST = "ln"

    @staticmethod
    def status(status: str) -> str:
        """Contacts whose (lower-cased) status is `status`."""
        return f"s/{status}"

    @staticmethod
    def list_name(lowered: str) -> str:
        """Contacts in the list of lower-cased name `lowered`."""
        return f"l/{lowered}"

    @staticmethod
    def field_value(field_name: str, code: int) -> str:
        """Contacts with one dictionary code of a text field (the last code: empty), or
        one day of a date field."""
        return f"v/{field_name}/{code}"

    @staticmethod
    def event_type(etype: str) -> str:
        """Contacts with at least one event of type `etype`."""
        return f"e/{etype}"

    @staticmethod
    def campaign(etype: str, code: int) -> str:
        """Contacts with an event of `etype` in the campaign of dictionary code `code`."""
        return f"c/{etype}/{code}"

    @staticmethod
    def day_prefix(etype: str) -> str:
        return f"d/{etype}/"

    @staticmethod
    def day(etype: str, day: int) -> str:
        """Contacts with an event of `etype` on `day` (days since 1970-01-01)."""
        return f"{BitmapKeys.day_prefix(etype)}{day}"

    @staticmethod
    def click_url(code: int) -> str:
        """Contacts who ever clicked the URL of dictionary code `code`."""
        return f"u/{code}"

    @staticmethod
    def recent_prefix(etype: str, k: int) -> str:
        return f"k/{etype}/{k}/"

    @staticmethod
    def recent(etype: str, k: int, day: int) -> str:
        """Contacts whose k-th latest event of `etype` is on `day` (1 <= k <= RECENT)."""
        return f"{BitmapKeys.recent_prefix(etype, k)}{day}"

    @staticmethod
    def day_of(prefix: str, name: str) -> int:
        """The day a ``*_prefix`` bitmap name ends with."""
        return int(name[len(prefix):])
