"""The contact part of the index: ids, statuses, lists and one column per field."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyroaring import BitMap

from ...errors import EngineError
from ...fields import EMAIL_DOMAIN_PATTERN, STATUSES, FieldType, Schema
from ..arrays import save, save_strings
from .bitmaps import (
    BitmapStore,
    days_of,
    flat,
    group_bitmaps,
    python_lower,
    sorted_unique,
    to_bitmap,
)
from .layout import (
    CONTACTS_VERSION,
    LOOKUP_FIELD,
    WORDS_MAX,
    BitmapKeys,
)
from .lookup import build_lookup

# --- the contact part ----------------------------------------------------------------

#: Field types stored as dictionary codes of lower-cased text.
TEXT_KINDS = (FieldType.TEXT,)


def read_contacts(files: Sequence[str], schema: Schema) -> pa.Table:
    """All contacts sorted by contact_id; fields missing from a file read as null."""
    wanted = ["contact_id", "email", "status", "lists", "date_added", *schema.custom_fields]
    tables = []
    for f in files:
        names = pq.ParquetFile(f).schema_arrow.names
        tables.append(pq.read_table(f, columns=[c for c in wanted if c in names]))
    if tables:
        table = pa.concat_tables(tables, promote_options="permissive")
    else:
        table = pa.table({"contact_id": pa.array([], pa.int64())})
    for name in wanted:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows))
    table = table.select(wanted).combine_chunks()
    ids = table.column("contact_id").to_numpy()
    if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():  # workspace files are sorted already
        table = table.take(pc.sort_indices(table.column("contact_id")))
    return table


def email_domains(emails: pa.Array) -> pa.Array:
    """`email_domain` by its one rule (`fields.EMAIL_DOMAIN_PATTERN`; null without an ``@``)."""
    emails = emails.cast(pa.string())
    parsed = pc.extract_regex(emails, EMAIL_DOMAIN_PATTERN)
    return pc.struct_field(parsed, "domain")


def encode_text(values: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(codes, lower-cased dictionary); null and "" get the code len(dictionary).

    The code type is the narrowest that fits, so scanning a low-cardinality field reads
    one byte per contact.
    """
    values = flat(values).cast(pa.string())
    empty = pc.fill_null(pc.equal(values, ""), True)
    encoded = flat(pc.dictionary_encode(pc.if_else(empty, pa.scalar(None, pa.string()), values)))
    dictionary = encoded.dictionary
    n = len(dictionary)
    dtype = np.uint8 if n < 255 else np.uint16 if n < 65535 else np.uint32
    codes = pc.fill_null(encoded.indices.cast(pa.int64()), n).to_numpy(zero_copy_only=False)
    return codes.astype(dtype), python_lower(dictionary)


#: Text fields with at most this many distinct values (state, country, title, plan...)
#: also get one contact bitmap per value, so "state is CA" is a bitmap and combines with
#: behavioural bitmaps without a pass over every contact. Above it (email, free text)
#: the per-value bitmaps would cost more to store than a scan of the codes.
VALUE_BITMAPS_MAX = 4096


def value_bitmaps(field_name: str, codes: np.ndarray, size: int) -> dict[str, BitMap]:
    """One bitmap per code (the empty code included), or none for a high-cardinality field."""
    if size > VALUE_BITMAPS_MAX or len(codes) == 0:
        return {}
    grouped = group_bitmaps(codes, np.arange(len(codes), dtype=np.uint32))
    return {BitmapKeys.field_value(field_name, code): bitmap for code, bitmap in grouped.items()}


def day_bitmaps(days: np.ndarray, present: np.ndarray) -> dict[int, BitMap]:
    """One bitmap per day of a date field with few distinct days (signup dates, renewal
    dates): a date range is then a union of bitmaps. None for a field with more days."""
    rows = np.flatnonzero(present).astype(np.uint32)
    if len(rows) == 0 or len(sorted_unique(days[rows])) > VALUE_BITMAPS_MAX:
        return {}
    return group_bitmaps(days[rows], rows)


def build_field(
    directory: Path, prefix: str, ftype: FieldType, column: pa.Array, store: BitmapStore,
    name: str,
) -> dict:
    """Store one field's column (and a text field's value bitmaps in `store`).

    Returns its description for meta.json.
    """
    if ftype in TEXT_KINDS:
        codes, lowered = encode_text(column)
        bitmaps = value_bitmaps(name, codes, len(lowered))
        store.write_layer(bitmaps)
        spec = {
            "type": ftype.value,
            "codes": save(directory / f"{prefix}.codes.npy", codes),
            "lower": save_strings(directory / f"{prefix}.lower.arrow", lowered),
            "value_bitmaps": bool(bitmaps),
        }
        if name == LOOKUP_FIELD:
            hashes, rows = build_lookup(codes, lowered)
            spec["hash"] = save(directory / f"{prefix}.hash.npy", hashes)
            spec["hash_rows"] = save(directory / f"{prefix}.hash_rows.npy", rows)
        if len(lowered) <= WORDS_MAX:
            words = directory / f"{prefix}.words.json"
            words.write_text(json.dumps(lowered.to_pylist()))
            spec["words"] = words.name
        return spec
    present = pc.is_valid(column).to_numpy(zero_copy_only=False)
    if ftype == FieldType.NUMBER:
        values = pc.fill_null(column.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)
        return {
            "type": ftype.value,
            "values": save(directory / f"{prefix}.values.npy", values),
            "present": save(directory / f"{prefix}.present.npy", present),
        }
    if ftype in (FieldType.DATE, FieldType.DATETIME):
        days, present = days_of(column) if len(column) else (np.zeros(0, np.int32), present)
        by_day = day_bitmaps(days, present)
        store.write_layer({BitmapKeys.field_value(name, day): b for day, b in by_day.items()})
        return {
            "type": ftype.value,
            "days": save(directory / f"{prefix}.days.npy", days),
            "present": save(directory / f"{prefix}.present.npy", present),
            "bitmap_days": sorted(by_day) if by_day else None,
        }
    if ftype == FieldType.BOOLEAN:
        values = pc.fill_null(column.cast(pa.int8()), -1).to_numpy(zero_copy_only=False)
        return {"type": ftype.value, "values": save(directory / f"{prefix}.values.npy", values)}
    raise EngineError(f"the index cannot store a {ftype} field")


def build_lists(store: BitmapStore, lists: pa.Array, n: int) -> None:
    """One bitmap per lower-cased list name, plus ``ln`` (in at least one list)."""
    lists = flat(lists).cast(pa.list_(pa.string()))
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    bitmaps = {BitmapKeys.IN_A_LIST: to_bitmap(np.flatnonzero(lengths > 0))}
    names = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    keep = pc.is_valid(names).to_numpy(zero_copy_only=False)
    if keep.any():
        names, parents = names.filter(pa.array(keep)), parents[keep]
        encoded = flat(pc.dictionary_encode(python_lower(names)))
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        dictionary = encoded.dictionary.to_pylist()
        for code, bitmap in group_bitmaps(codes, parents.astype(np.uint32)).items():
            bitmaps[BitmapKeys.list_name(dictionary[code])] = bitmap
    store.write_layer(bitmaps)


def build_contacts(directory: Path, files: Sequence[str], schema: Schema) -> dict:
    """The contact part: ids, status, every field; returns its meta.json section."""
    table = read_contacts(files, schema)
    n = table.num_rows
    table = pa.table({name: flat(table.column(name)) for name in table.column_names})
    ids = table.column("contact_id").to_numpy().astype(np.int64)
    part = directory / "contacts"
    part.mkdir(parents=True, exist_ok=True)
    save(part / "ids.npy", ids)
    status = python_lower(table.column("status").cast(pa.string()))
    codes = pc.fill_null(pc.index_in(status, pa.array(STATUSES)), 255)
    status_codes = codes.to_numpy(zero_copy_only=False).astype(np.uint8)
    save(part / "status.npy", status_codes)
    store = BitmapStore(part)
    status_maps = {BitmapKeys.status(s): to_bitmap(np.flatnonzero(status_codes == i)) for i, s in enumerate(STATUSES)}
    store.write_layer(status_maps)
    build_lists(store, table.column("lists"), n)
    fields: dict[str, dict] = {}
    columns = {"email": table.column("email"), "email_domain": email_domains(table.column("email"))}
    columns["date_added"] = table.column("date_added")
    for name in schema.custom_fields:
        columns[name] = table.column(name)
    types = {"email": FieldType.TEXT, "email_domain": FieldType.TEXT, "date_added": FieldType.DATETIME}
    types.update(schema.custom)
    for i, (name, column) in enumerate(columns.items()):
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if pa.types.is_null(column.type):
            column = pa.nulls(n, type=_arrow_type(types[name]))
        fields[name] = build_field(part, f"f{i}", types[name], column, store, name)
    dense = bool(n == 0 or (ids[0] == 1 and ids[-1] == n))
    return {
        "n": n,
        "dense": dense,
        "fields": fields,
        "bitmaps": store.to_json(),
        "version": CONTACTS_VERSION,
        "addresses": odd_addresses(part, columns["email"]),
    }


def odd_addresses(directory: Path, emails: pa.Array) -> dict:
    """The rows whose stored address is not what the email lookup finds it by, with the
    address the rule makes of it (the files named in meta.json's ``addresses``).

    The lookup finds a row by its lower-cased address; an import matches an address
    by the rule applied to the stored side (`addresses.normalise`). The two agree on
    every address the rule stored; an address stored by an older rule (white space
    around it, a full-width letter) is listed here, so that an import looks it up by
    its normal form and finds exactly the contacts a pass over all of them would.
    """
    from ... import addresses

    values = flat(emails).cast(pa.string())
    # an ASCII address is normalised by trimming ASCII white space and lower-casing: it
    # differs from its lower-cased form only when there is white space at an end
    trimmed = pc.ascii_trim(values, characters=addresses.ASCII_SPACE)
    odd = pc.invert(pc.fill_null(pc.string_is_ascii(values), True))
    odd = pc.or_(odd, pc.fill_null(pc.not_equal(trimmed, values), False))
    rows = np.flatnonzero(odd.to_numpy(zero_copy_only=False))
    kept, normal = [], []
    for row, text in zip(rows.tolist(), values.take(pa.array(rows)).to_pylist(), strict=True):
        if addresses.normalise(text) != text.lower():
            kept.append(row)
            normal.append(addresses.normalise(text))
    return {
        "rows": save(directory / "addresses.rows.npy", np.array(kept, np.int64)),
        "normal": save_strings(directory / "addresses.normal.arrow", pa.array(normal, pa.string())),
    }


def _arrow_type(ftype: FieldType) -> pa.DataType:
    return {
        FieldType.TEXT: pa.string(),
        FieldType.NUMBER: pa.float64(),
        FieldType.DATE: pa.date32(),
        FieldType.DATETIME: pa.timestamp("us"),
        FieldType.BOOLEAN: pa.bool_(),
    }[ftype]


